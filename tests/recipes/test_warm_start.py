"""LibriMini warm start (``init_from``) and the demo model's learning-curve notes.

Authors
-------
 * sb_mamba developers
"""

import csv
import math
import shutil

import pytest
import torch

from sb_mamba.errors import UserError
from sb_mamba.lobes.sepmamba import SepMamba
from sb_mamba.modelfolder import ModelConfig, write_folder
from sb_mamba.training import notes
from sb_mamba.training.recipe import warm_start
from tests.helpers import old_layout_yaml, run_train_py

TINY = [
    "--model_dim=8",
    "--epoch_size=4",
    "--batch_size=2",
    "--segment_seconds=0.5",
    "--prepare_kwargs={n_valid: 2, n_test: 2, segment_seconds: 1.0}",
    "--n_audio_to_save=0",
    "--N_epochs=1",
]


def tiny_model_folder(folder, seed, stride=4, layout="new", num_blocks=1):
    """An exported model folder (fp16 weights) of the SepMamba the recipe builds with
    TINY; ``layout="old"``: as exported before model folders became data."""
    torch.manual_seed(seed)
    kwargs = dict(num_spks=2, dim=8, num_blocks=num_blocks, stride=stride, output="mask")
    model = SepMamba(**kwargs)
    if layout == "new":
        write_folder(
            folder,
            ModelConfig("sb_mamba.lobes.sepmamba.SepMamba", kwargs, 8000, 2),
            model.state_dict(),
            fp16=True,
        )
        return model.state_dict()
    folder.mkdir(parents=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "separator.ckpt")
    (folder / "hyperparams.yaml").write_text(
        old_layout_yaml("sb_mamba.lobes.sepmamba.SepMamba", kwargs, 8000, 2)
    )
    return model.state_dict()


def saved_separator(out):
    ckpts = sorted((out / "save").glob("CKPT+*/separator.ckpt"))
    assert ckpts, list((out / "save").iterdir())
    return torch.load(ckpts[-1], weights_only=True)


def test_init_from_warm_starts_then_checkpoint_wins(tmp_path):
    init = tiny_model_folder(tmp_path / "model_a", seed=1)
    tiny_model_folder(tmp_path / "model_b", seed=2, layout="old")
    out = tmp_path / "run"
    # lr 0 (cosine: no lr floor): training leaves the weights as initialised
    zero_lr = ["--lr=0.0", "--lr_schedule=warmup_cosine"]
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={out}",
        *zero_lr,
        f"--init_from={tmp_path / 'model_a'}",
        *TINY,
    )
    assert "Warm start: separator initialised from" in proc.stdout
    saved = saved_separator(out)
    for k, v in init.items():  # fp16-stored weights, loaded into the fp32 model
        assert torch.allclose(saved[k], v.half().float()), k

    # the run now has a checkpoint: another init_from is ignored, the run resumes
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={out}",
        *zero_lr,
        f"--init_from={tmp_path / 'model_b'}",
        *TINY[:-1],
        "--N_epochs=2",
    )
    assert "ignored: the run resumes from its checkpoint" in proc.stdout
    assert torch.equal(saved_separator(out)["decoder.weight"], saved["decoder.weight"])


def test_init_from_errors_are_clear(tmp_path):
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={tmp_path / 'a'}",
        f"--init_from={tmp_path / 'missing'}",
        *TINY,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "no such model folder or checkpoint file" in proc.stdout
    assert "Traceback" not in proc.stdout

    tiny_model_folder(tmp_path / "model", seed=1)  # dim 8: the default dim 32 does not fit
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={tmp_path / 'b'}",
        f"--init_from={tmp_path / 'model'}",
        *TINY[1:],
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2  # read from the folder's config.json, nothing built
    assert "was trained with dim=8 (the recipe builds 32)" in proc.stdout

    # a bare weights file (no config to compare): the load itself refuses
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={tmp_path / 'b2'}",
        f"--init_from={tmp_path / 'model' / 'separator.safetensors'}",
        *TINY[1:],
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "does not fit the recipe's separator" in proc.stdout and "model_dim" in proc.stdout

    # same shapes, other layout: weights trained with stride 2 are refused
    tiny_model_folder(tmp_path / "stride2", seed=1, stride=2, layout="old")
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={tmp_path / 'c'}",
        f"--init_from={tmp_path / 'stride2'}",
        *TINY,
        "--model_stride=4",
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "was trained with stride=2 (the recipe builds 4)" in proc.stdout


@pytest.mark.parametrize("causal", [False, True])
def test_init_from_grows_a_model_in_depth(tmp_path, causal):
    """A model folder with one Mamba block per layer starts a model with two: the
    deeper model separates exactly as the folder's model, then its new blocks train."""
    kwargs = dict(num_spks=2, dim=8, stride=4, output="mask", causal=causal)
    torch.manual_seed(0)
    small = SepMamba(num_blocks=1, **kwargs)
    config = ModelConfig("sb_mamba.lobes.sepmamba.SepMamba", {**kwargs, "num_blocks": 1}, 8000, 2)
    write_folder(tmp_path / "small", config, small.state_dict())
    deep = SepMamba(num_blocks=2, **kwargs)
    warm_start(deep, tmp_path / "small")
    x = torch.randn(2, 1600)
    torch.testing.assert_close(deep(x), small(x), rtol=1e-5, atol=1e-6)
    # the new blocks learn: one step moves their output projections off zero
    new = "down.0.mamba.forward_blocks." + ("3" if causal else "1")
    assert deep.get_submodule(new).mixer.out_proj.weight.abs().max() == 0
    opt = torch.optim.SGD(deep.parameters(), lr=0.1)
    deep(x).pow(2).mean().backward()
    opt.step()
    assert deep.get_submodule(new).mixer.out_proj.weight.abs().max() > 0
    # a model with fewer blocks than the folder's is refused, as any other layout
    config = ModelConfig("sb_mamba.lobes.sepmamba.SepMamba", {**kwargs, "num_blocks": 2}, 8000, 2)
    write_folder(tmp_path / "deep", config, deep.state_dict())
    with pytest.raises(UserError, match="was trained with num_blocks=2 .the recipe builds 1"):
        warm_start(SepMamba(num_blocks=1, **kwargs), tmp_path / "deep")


def test_demo_learning_curve_continues_the_history(tmp_path):
    out = tmp_path / "run"
    run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={out}",
        *TINY[:-1],
        "--N_epochs=2",
        "--lr_schedule=warmup_cosine",
        "--warmup_steps=1",
    )
    log = (out / "train_log.txt").read_text()
    assert log.count("train cpu-minutes") == 2, log
    history = tmp_path / "history.csv"
    with open(history, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "run",
                "epoch",
                "steps",
                "cpu_hours",
                "cpu_estimated",
                "lr",
                "batch_size",
                "segment_seconds",
                "valid_si_snri",
            ]
        )
        w.writerow(["run 1", 1, 100, 1.5, 1, 0.001, 4, 1.0, 2.5])
    shutil.copy(history, out / "history.csv")
    (tmp_path / "notes").mkdir()  # the evaluation of export_demo.sh writes this first
    (tmp_path / "notes" / "test_results.csv").write_text(
        "snt_id,sdr,sdr_i,si-snr,si-snr_i\na,1,1,1,1\navg,1,1,1,1.0\n"
    )
    notes.main(out, tmp_path / "notes")

    with open(tmp_path / "notes" / "learning_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["run 1", "run 2", "run 2"]
    assert [int(r["steps"]) for r in rows] == [100, 102, 104]  # 4 mixtures / batch 2 per epoch
    assert float(rows[1]["cpu_hours"]) > 1.5 and float(rows[2]["cpu_hours"]) > float(
        rows[1]["cpu_hours"]
    )
    assert rows[2]["cpu_estimated"] == "0"
    png = tmp_path / "notes" / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100  # decodes
    text = (tmp_path / "notes" / "notes.md").read_text()
    assert "learning_curve.png" in text and "| run 2 | 2 | 104 |" in text
    # the fit and the valid/test gap (best valid 2.5 dB in history, test 1.0 dB)
    assert "per doubling" in text and "score 1.50 dB below" in text, text


def test_demo_extrapolation_solves_the_fit():
    rows = [dict(cpu_hours=h, valid_si_snri=3 + 0.5 * math.log2(h)) for h in (0.5, 1, 2, 4)]
    b, hours = notes.extrapolate(rows, 5.0)  # 3 + 0.5 * log2(16) = 5
    assert abs(b - 0.5) < 1e-9 and abs(hours - 16) < 1e-6
    # a curve shorter than two CPU-hours is fitted over its second half: 0.4 and 0.8 h
    short = [
        dict(cpu_hours=h, valid_si_snri=v)
        for h, v in ((0.1, -5.0), (0.2, 0.0), (0.4, 2.0), (0.8, 3.0))
    ]
    b, hours = notes.extrapolate(short, 5.0)  # 2 + log2(h / 0.4) = 5 at 3.2 h
    assert abs(b - 1.0) < 1e-9 and abs(hours - 3.2) < 1e-6
    flat = [dict(cpu_hours=h, valid_si_snri=3 - 0.1 * h) for h in (1, 2, 4)]
    assert notes.extrapolate(flat, 5.0)[1] == math.inf
