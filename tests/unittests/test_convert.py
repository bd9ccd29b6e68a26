"""``sb-mamba convert``: official SPMamba / SepMamba checkpoints to model folders.

Each official format is written here with random weights under the official
key names (SepMamba's as in ``itsmeeandrew/SepMamba:src/models/SepMamba.py``
and ``SepMambaCausal.py``, SPMamba's as in
``JusperLee/SPMamba:look2hear/models/SPMamba.py``): a reference sb_mamba
model gets random weights, and its tensors are written out module by module
under the official names. The converted folder, loaded with
``MambaSeparator.from_hparams``, must give the reference model's outputs.
Small configurations keep every conversion under a second.

Authors
-------
 * sb_mamba developers
"""

import argparse
import hashlib
import json
import os
from collections import OrderedDict

import pytest
import torch

from sb_mamba import cli
from sb_mamba.errors import UserError
from sb_mamba.inference import MambaSeparator
from sb_mamba.inference.convert import convert
from sb_mamba.lobes.sepmamba import SepMamba
from sb_mamba.lobes.spmamba import SPMamba

FILES = ["README.md", "config.json", "separator.safetensors"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread is fastest on a shared machine."""


def _randomized(model, seed=0):
    """``model`` in eval mode with its weights moved off their initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_sepmamba(seed=0, **kw):
    kw = dict(dim=8, num_blocks=1, d_state=4) | kw
    return _randomized(SepMamba(**kw), seed)


def tiny_spmamba(seed=0, **kw):
    kw = dict(emb_dim=4, num_layers=1, emb_ks=2, attn_heads=2, d_state=4) | kw
    return _randomized(SPMamba(**kw), seed)


def official_sepmamba_state(model):
    """``model``'s tensors under the official SepMamba names (module by module)."""
    state = OrderedDict()

    def put(prefix, module):
        for key, value in module.state_dict().items():
            state[prefix + key] = value.clone()

    def put_mamba(prefix, layer):
        for j, block in enumerate(layer.forward_blocks):
            put(f"{prefix}mamba_layer.forward_mamba_block.mamba_blocks.{j}.", block)
        for j, block in enumerate(layer.backward_blocks or []):
            put(f"{prefix}mamba_layer.backward_mamba_block.mamba_blocks.{j}.", block)

    for i, stage in enumerate(model.down):
        put(f"down.{i}.conv1d.", stage.conv)
        put_mamba(f"down.{i}.", stage.mamba)
        put(f"down.{i}.act.", stage.act)
    for i, stage in enumerate(model.up):
        put(f"up.{i}.convT1d.", stage.convt)
        put(f"up.{i}.conv1d_fusion.", stage.fusion)
        put_mamba(f"up.{i}.", stage.mamba)
        put(f"up.{i}.act.", stage.act)
    put("decoder.", model.decoder)
    return state


def official_spmamba_state(model):
    """SPMamba's official keys are sb_mamba's (a few checked literally)."""
    state = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    for key in (
        "conv.0.weight",
        "conv.1.weight",
        "deconv.weight",
        "blocks.0.intra_norm.gamma",
        "blocks.0.inter_linear.weight",
        "blocks.0.intra_mamba.forward_blocks.0.mixer.A_log",
        "blocks.0.inter_mamba.backward_blocks.0.norm.weight",
        "blocks.0.attn_conv_Q_1.2.gamma",
        "blocks.0.attn_concat_proj.1.weight",
    ):
        assert key in state, key
    return state


def lightning_ckpt(state, config):
    """A PyTorch-Lightning checkpoint of look2hear's AudioLightningModule."""
    flat = {}

    def flatten(d, prefix=""):
        for k, v in d.items():
            key = f"{prefix}_{k}" if prefix else k
            if isinstance(v, dict):
                flatten(v, key)
            else:  # look2hear's config_to_hparams: lists -> tensors, None -> "None"
                flat[key] = torch.tensor(v) if isinstance(v, list) else ("None" if v is None else v)

    flatten(config)
    return {
        "epoch": 41,
        "global_step": 12345,
        "pytorch-lightning_version": "2.1.2",
        "state_dict": OrderedDict((f"audio_model.{k}", v) for k, v in state.items()),
        "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 7}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss/dataloader_idx_0'}": {
                "best_model_score": torch.tensor(-14.2),
                "dirpath": "/exp/ckpt",
            }
        },
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(3.0)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}],
            }
        ],
        "lr_schedulers": [{"factor": 0.5, "best": 1.5, "mode": "min"}],
        "hparams_name": "kwargs",
        "hyper_parameters": flat,
        "training_config": config,
    }


def look2hear_config(n_fft, stride, sample_rate):
    """The look2hear training config (configs/spmamba-*.yml), as a dict."""
    return {
        "audionet": {
            "audionet_name": "SPMamba",
            "audionet_config": {
                "input_dim": 64,
                "n_srcs": 2,
                "n_fft": n_fft,
                "stride": stride,
                "window": "hann",
                "n_imics": 1,
                "n_layers": 1,
                "attn_n_head": 2,
                "attn_approx_qk_dim": 512,
                "emb_dim": 4,
                "emb_ks": 2,
                "emb_hs": 1,
                "activation": "prelu",
                "eps": 1.0e-5,
                "use_builtin_complex": False,
            },
        },
        "training": {"system": "AudioLightningModule", "gpus": [0, 1], "epochs": 500},
        "datamodule": {
            "data_name": "Libri2MixDataModule",
            "data_config": {"sample_rate": sample_rate, "segment": 3.0, "batch_size": 1},
        },
        "main_args": {"exp_dir": "/exp/ckpt", "conf_dir": None},
    }


def check_folder(out, ref, sample_rate, source):
    """``out`` loads and reproduces ``ref``; its card names the source and its hash."""
    assert sorted(p.name for p in out.iterdir()) == FILES
    sep = MambaSeparator.from_hparams(source=str(out), run_opts={"device": "cpu"})
    assert sep.sample_rate == sample_rate and sep.num_spks == ref.num_spks
    assert sep.mods.separator.get_model_args() == ref.get_model_args()
    mix = torch.randn(2, 1999, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(mix)
    assert torch.allclose(sep.separate_batch(mix), expected, atol=1e-5, rtol=1e-4)
    card = (out / "README.md").read_text()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert source.name in card and digest in card
    assert "check the licence with the original authors" in card
    assert "hyperparams_train.yaml" not in card
    config = json.loads((out / "config.json").read_text())
    assert "ssm_backend" not in config["separator_args"]  # a run option, never stored
    assert config["sample_rate"] == sample_rate and digest in config["origin"]
    return card


# --------------------------------------------------------------- SPMamba
def test_spmamba_lightning_ckpt_reads_the_stored_config(tmp_path):
    ref = tiny_spmamba(hop_length=128)  # stored config, not the n_fft guess
    path = tmp_path / "epoch=41.ckpt"
    torch.save(lightning_ckpt(official_spmamba_state(ref), look2hear_config(256, 128, 16000)), path)
    convert(path, tmp_path / "out")
    card = check_folder(tmp_path / "out", ref, 16000, path)
    assert "PyTorch-Lightning checkpoint" in card and "| `hop_length` | `128` |" in card


def test_spmamba_serialize_package_16k(tmp_path):
    ref = tiny_spmamba(n_fft=512, hop_length=128)
    path = tmp_path / "best_model.pth"
    torch.save(
        {
            "model_name": "SPMamba",
            "state_dict": official_spmamba_state(ref),
            "model_args": {"n_sample_rate": 2},  # what look2hear stores
            "infos": {
                "software_versions": {
                    "torch_version": torch.torch_version.TorchVersion("2.1.0"),
                    "pytorch_lightning_version": "2.1.2",
                }
            },
        },
        path,
    )
    convert(path, tmp_path / "out")
    card = check_folder(tmp_path / "out", ref, 16000, path)
    assert "serialize()" in card and "257 bins" in card


def test_spmamba_bare_state_dict_8k_and_namespace_hparams(tmp_path):
    ref = tiny_spmamba(seed=3)
    path = tmp_path / "spmamba.pth"
    torch.save(official_spmamba_state(ref), path)
    convert(path, tmp_path / "out", num_spks=2)
    check_folder(tmp_path / "out", ref, 8000, path)
    # an older Lightning file: hyper-parameters in an argparse.Namespace
    ckpt = lightning_ckpt(official_spmamba_state(ref), {})
    ckpt["hyper_parameters"] = argparse.Namespace(sample_rate=8000, stride=64)
    torch.save(ckpt, tmp_path / "old.ckpt")
    convert(tmp_path / "old.ckpt", tmp_path / "out_old", name="old")
    assert (tmp_path / "out_old" / "README.md").read_text().count("# old:") == 1


# -------------------------------------------------------------- SepMamba
@pytest.mark.parametrize("causal", [False, True])
def test_sepmamba_training_checkpoint(tmp_path, causal):
    ref = tiny_sepmamba(causal=causal, activation="prelu" if causal else "relu")
    official = official_sepmamba_state(ref)
    assert (
        "down.0.mamba_layer.backward_mamba_block.mamba_blocks.0.mixer.A_log" in official
    ) != causal
    path = tmp_path / "best_model.pth"
    torch.save(
        {
            "epoch": 12,
            "model_state_dict": official,
            "optimizer_state_dict": {
                "state": {},
                "param_groups": [{"lr": 1e-3, "params": list(range(len(official)))}],
            },
            "lr_scheduler": {"step_size": 2, "gamma": 0.5, "last_epoch": 12},
        },
        path,
    )
    convert(path, tmp_path / "out", sample_rate=8000)
    card = check_folder(tmp_path / "out", ref, 8000, path)
    assert "T - 1 samples" in card  # the odd-length note
    assert ref.get_model_args()["num_blocks"] == 1  # 2 blocks in the causal stack


def test_sepmamba_bare_state_dict_from_the_cli(tmp_path, capsys):
    ref = tiny_sepmamba(seed=5)
    path = tmp_path / "sepmamba.pt"
    torch.save(official_sepmamba_state(ref), path)
    assert (
        cli.main(
            [
                "convert",
                str(path),
                str(tmp_path / "out"),
                "--model",
                "sepmamba",
                "--sample-rate",
                "8000",
                "--name",
                "SepMamba-S",
            ]
        )
        == 0
    )
    check_folder(tmp_path / "out", ref, 8000, path)
    # no rate in a SepMamba file: one line asking for it, nothing written
    assert cli.main(["convert", str(path), str(tmp_path / "out2")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--sample-rate" in err[0]
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------- errors
def _sepmamba_file(tmp_path, edit):
    state = official_sepmamba_state(tiny_sepmamba())
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("up.1.conv1d_fusion.bias"), "missing keys 'up.1.fusion.bias'"),
        (
            lambda s: s.update({"down.1.extra.weight": torch.ones(3)}),
            "unexpected keys (left over) 'down.1.extra.weight'",
        ),
        (lambda s: s.update({"decoder.bias": torch.ones(3)}), "'decoder.bias' (3,) vs (2,)"),
        (lambda s: s.pop("decoder.weight"), "cannot tell SPMamba from SepMamba"),
    ],
)
def test_wrong_keys_one_error_nothing_written(tmp_path, edit, message):
    path = _sepmamba_file(tmp_path, edit)
    with pytest.raises(UserError) as err:
        convert(path, tmp_path / "out", sample_rate=8000)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.pth"]


def test_other_errors_leave_an_existing_folder_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ref = tiny_spmamba()
    ckpt = lightning_ckpt(official_spmamba_state(ref), look2hear_config(256, 64, 8000))
    ckpt["state_dict"]["loss_func.weight"] = torch.ones(1)  # outside audio_model
    torch.save(ckpt, tmp_path / "extra.ckpt")
    with pytest.raises(UserError, match="'loss_func.weight' outside the model"):
        convert(tmp_path / "extra.ckpt", out)
    torch.save(official_spmamba_state(ref), tmp_path / "sp.pth")
    with pytest.raises(UserError, match="has 2 output sources, not --num-spks 3"):
        convert(tmp_path / "sp.pth", out, num_spks=3)
    with pytest.raises(UserError, match="has no 'down.0.conv.weight'"):
        convert(tmp_path / "sp.pth", out, model="sepmamba", sample_rate=8000)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        convert(tmp_path / "notes.txt", out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    convert(tmp_path / "sp.pth", out)  # a good one replaces the model files only
    assert sorted(p.name for p in out.iterdir()) == FILES[:2] + ["keep.txt"] + FILES[2:]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


# ----------------------------------------------------------- unpickling
class PlainStateDict(OrderedDict):
    """An innocent class of the checkpoint's author (not allow-listed)."""


class Planted:
    """Unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unknown_classes_are_refused_by_name(tmp_path):
    state = official_sepmamba_state(tiny_sepmamba())
    torch.save(PlainStateDict(state), tmp_path / "custom.pth")
    with pytest.raises(
        UserError,
        match=r"holds a [\w.]*PlainStateDict object.*"
        r"--trust-checkpoint",
    ):
        convert(tmp_path / "custom.pth", tmp_path / "out", sample_rate=8000)
    assert not (tmp_path / "out").exists()
    marker = tmp_path / "PLANTED"
    torch.save({"model_state_dict": state, "note": Planted(marker)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"holds a [\w.]*system object"):
        convert(tmp_path / "bad.pth", tmp_path / "out", sample_rate=8000)
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the innocent class loads when the user trusts the file
    convert(tmp_path / "custom.pth", tmp_path / "out", sample_rate=8000, trust_checkpoint=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == FILES
