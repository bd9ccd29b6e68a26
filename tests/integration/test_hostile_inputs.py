"""The hostile inputs of issue 22, one test (or more) per row of its table.

Model folders are data (``sb_mamba.modelfolder``): payloads planted in a
model's or a run's YAML, in file or folder names, never run (their marker
file never appears); outputs are never written through links or outside the
output folder; user mistakes end with one line and exit status 2.

Authors
-------
 * sb_mamba developers
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sb_mamba import cli
from sb_mamba.audio import read_audio, write_audio
from sb_mamba.dataio.generate import make_mixtures
from sb_mamba.dataio.manifests import prepare_whamr
from sb_mamba.errors import UserError
from sb_mamba.inference import MambaSeparator
from sb_mamba.inference.convert import convert
from sb_mamba.inference.export import export_model
from sb_mamba.inference.separator import normalize_sources
from sb_mamba.modelfolder import read_folder, read_run_hparams
from sb_mamba.resources import hparams_path, pretrained_path
from sb_mamba.training.recipe import load_hparams, warm_start
from tests.helpers import (
    RECIPES,
    SAMPLES,
    make_mixture,
    run_train_py,
    tiny_model_folder,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SEPMAMBA = "sb_mamba.lobes.sepmamba.SepMamba"


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A file (relative name ``PWNED`` in the working folder) no payload may create."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a payload ran"


def _hashes(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def _old_folder_with(tmp_path, extra, name="model"):
    folder = tmp_path / name
    tiny_model_folder(folder, "old", "\n" + extra + "\n")
    return folder


def _refused(folder):
    """from_hparams refuses the folder with one line; returns the message."""
    start = time.perf_counter()
    with pytest.raises(UserError) as e:
        MambaSeparator.from_hparams(source=str(folder))
    assert time.perf_counter() - start < 10, "the check itself must be quick"
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------- 1, 2, 3, 13: model YAMLs
def test_case_1_tuples_never_reach_an_unsafe_loader(tmp_path, marker):
    for i, extra in enumerate(
        [
            'pwn: !tuple "(!!python/object/apply:os.mkdir [PWNED],)"',
            "pwn: (!!python/object/apply:os.mkdir [PWNED],)",
        ]
    ):
        assert "unexpected key 'pwn'" in _refused(_old_folder_with(tmp_path, extra, f"m{i}"))
    # a tuple-looking scalar where a separator argument goes is a plain string
    folder = tmp_path / "arg"
    tiny_model_folder(folder, "old")
    text = (
        (folder / "hyperparams.yaml")
        .read_text()
        .replace('activation: "relu"', "activation: (!!python/object/apply:os.mkdir [PWNED],)")
    )
    (folder / "hyperparams.yaml").write_text(text)
    assert "Cannot build" in _refused(folder)


def test_case_2_includes_are_never_followed(tmp_path, marker):
    folder = _old_folder_with(tmp_path, "more: !include:sub/a.yaml")
    (folder / "sub").mkdir()
    (folder / "sub" / "a.yaml").write_text("x: !include:b.yaml\n")
    (folder / "sub" / "b.yaml").write_text("y: !apply:os.mkdir [PWNED]\n")
    assert "unexpected key 'more'" in _refused(folder)
    # also as a separator argument
    folder = tmp_path / "arg"
    tiny_model_folder(folder, "old")
    text = (
        (folder / "hyperparams.yaml")
        .read_text()
        .replace("    dim: 8", "    dim: !include:sub/a.yaml")
    )
    (folder / "hyperparams.yaml").write_text(text)
    assert "'!include:sub/a.yaml' is not a plain value" in _refused(folder)


def test_case_3_tagged_keys_are_refused(tmp_path, marker):
    for i, extra in enumerate(['!apply:os.mkdir "PWNED": 2', '? !apply:os.mkdir ["PWNED"]\n: 2']):
        message = _refused(_old_folder_with(tmp_path, extra, f"m{i}"))
        assert "a key tagged '!apply:os.mkdir'" in message
    folder = tmp_path / "inner"
    tiny_model_folder(folder, "old")
    text = (
        (folder / "hyperparams.yaml")
        .read_text()
        .replace("    dim: 8", '    dim: 8\n    !apply:os.mkdir "PWNED": 2')
    )
    (folder / "hyperparams.yaml").write_text(text)
    assert "a key tagged" in _refused(folder)


def test_case_13_reference_bombs_are_refused_at_once(tmp_path):
    bombs = [
        "a: 9\nb: !ref <a> ** <a> ** <a> ** <a>",
        "a: [1, 2]\nb: !copy <a>\nc: !copy <b>\nd: !copy <c>",
    ]
    for i, extra in enumerate(bombs):
        assert "unexpected key 'a'" in _refused(_old_folder_with(tmp_path, extra, f"m{i}"))
    # inside the separator's arguments too
    folder = tmp_path / "arg"
    tiny_model_folder(folder, "old")
    text = (
        (folder / "hyperparams.yaml")
        .read_text()
        .replace("    dim: 8", "    dim: !ref <num_spks> ** <num_spks> ** <num_spks> ** 99")
    )
    (folder / "hyperparams.yaml").write_text(text)
    assert "'!ref' is not a plain value" in _refused(folder)


def test_old_layout_folders_load_as_before(tmp_path):
    """A folder exported before the change loads (read as data) and gives the
    outputs of its weights; `sb-mamba migrate` rewrites it, outputs unchanged."""
    folder = tmp_path / "old"
    net = tiny_model_folder(folder, "old")
    mix = make_mixture(0.5)[0]
    with torch.no_grad():
        ref = net(mix)
    # the backend is a run option: the tiny model ran the torch scan, so does the folder
    old = MambaSeparator.from_hparams(source=str(folder), run_opts={"ssm_backend": "torch"})
    assert torch.equal(old.separate_batch(mix), ref)
    assert cli.main(["migrate", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "separator.safetensors"]
    new = MambaSeparator.from_hparams(source=str(folder), run_opts={"ssm_backend": "torch"})
    assert torch.equal(new.separate_batch(mix), ref)
    assert cli.main(["migrate", str(folder)]) == 0  # already migrated: nothing to do


# ----------------------------------------------- 4, 5, 7, 14: other runs
def _run_folder(tmp_path, extra_yaml="", ckpt_name=None):
    """A recipe output folder: resolved hyperparams.yaml plus one checkpoint."""
    from speechbrain.utils.checkpoints import Checkpointer

    out = tmp_path / "run"
    net = tiny_model_folder(tmp_path / "unused", "old")
    args = net.get_model_args() | {"ssm_backend": "torch"}
    lines = [
        "seed: 1",
        "__set_seed: !apply:speechbrain.utils.seed_everything [1]",
        "num_spks: 2",
        "sample_rate: 8000",
        "model:",
        f"  separator: &id001 !new:{SEPMAMBA}",
        *(f"    {k}: {json.dumps(v)}" for k, v in args.items()),
        "modules:",
        "  separator: *id001",
        extra_yaml,
        "",
    ]
    out.mkdir()
    (out / "hyperparams.yaml").write_text("\n".join(lines))
    ckpt = Checkpointer(out / "save", {"separator": net}).save_checkpoint(meta={"si-snr": 3.0})
    if ckpt_name is not None:
        ckpt.path.rename(ckpt.path.with_name(ckpt_name))
    return out, net


def test_case_4_init_from_reads_a_folder_as_data(tmp_path, marker):
    folder = _old_folder_with(tmp_path, "pwn: !applyref:os.mkdir [PWNED]")
    net = tiny_model_folder(tmp_path / "fresh", "new", seed=3)
    with pytest.raises(UserError, match="unexpected key 'pwn'"):
        warm_start(net, folder)
    # a folder in the current layout: a hyperparams.yaml beside it is never read
    folder = tmp_path / "new"
    src = tiny_model_folder(folder, "new", seed=1)
    (folder / "hyperparams.yaml").write_text("pwn: !applyref:os.mkdir [PWNED]\n")
    warm_start(net, folder)
    assert torch.equal(net.decoder.weight, src.decoder.weight)
    # and the layout check still compares the stored arguments
    other = tiny_model_folder(tmp_path / "wide", "new", dim=16)
    with pytest.raises(UserError, match="was trained with dim=8"):
        warm_start(other, folder)


def test_case_4_init_from_through_train_py(tmp_path, marker):
    """The LibriMini recipe with init_from at a hostile old-layout folder: exit 2."""
    folder = _old_folder_with(tmp_path, 'pwn: !applyref:os.mkdir ["PWNED"]')
    argv = [
        "sepmamba.yaml",
        f"--output_folder={tmp_path / 'out'}",
        f"--init_from={folder}",
        "--model_dim=8",
        "--n_audio_to_save=0",
        "--prepare_kwargs={n_valid: 1, n_test: 1, segment_seconds: 0.5}",
    ]
    code, out = _recipe_main(argv)
    errors = [line for line in out.splitlines() if "UserError" in line]
    assert code == 2 and len(errors) == 1 and "unexpected key 'pwn'" in errors[0], out[-3000:]
    assert "Traceback" not in out
    assert not (RECIPES / "LibriMini" / "separation" / "PWNED").exists()


def test_case_5_export_never_runs_the_run_yaml(tmp_path, marker):
    out, net = _run_folder(
        tmp_path, "pwn: !applyref:os.mkdir [PWNED]\nmore: !apply:os.mkdir [PWNED]"
    )
    target = export_model(out, tmp_path / "hub")
    config, state = read_folder(target)
    assert config.separator_args["dim"] == 8 and "ssm_backend" not in config.separator_args
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # a needed value that is code is refused, not run
    (out / "hyperparams.yaml").write_text(
        (out / "hyperparams.yaml")
        .read_text()
        .replace("    dim: 8", "    dim: !applyref:os.mkdir [PWNED]")
    )
    with pytest.raises(UserError, match="'!applyref:os.mkdir' cannot be read as data"):
        export_model(out, tmp_path / "hub2")
    assert not (tmp_path / "hub2").exists()


def test_case_5_export_reads_a_raw_recipe_yaml(tmp_path):
    """A raw recipe YAML (include of a shipped fragment with overrides) as data."""
    out, _ = _run_folder(tmp_path)
    raw = tmp_path / "raw.yaml"
    raw.write_text(
        f"data_folder: !PLACEHOLDER\nnum_spks: 2\nsample_rate: 8000\nwidth: 8\n"
        f"model: !include:{hparams_path('models/sepmamba_s.yaml')}\n"
        "    num_spks: !ref <num_spks>\n    dim: !ref <width>\n    num_blocks: 1\n"
        "    d_state: 4\nmodules:\n    separator: !ref <model[separator]>\n"
    )
    config = read_run_hparams(raw)
    assert (config.separator_args["dim"], config.separator_args["num_blocks"]) == (8, 1)
    assert config.separator_args["kernel_size"] == 16  # the fragment's own value
    export_model(out, tmp_path / "hub", hparams_file=raw)


def test_case_6_convert_file_names_are_data(tmp_path, marker):
    from sb_mamba.lobes.sepmamba import SepMamba

    ref = SepMamba(dim=8, num_blocks=1, d_state=4).eval()
    src = tmp_path / 'x.pth\npwn: !apply:os.mkdir ["PWNED"]\n#'
    torch.save(ref.state_dict(), src)  # sb_mamba's keys are valid official-SepMamba keys here
    convert(src, tmp_path / "out", model="sepmamba", sample_rate=8000)
    model = MambaSeparator.from_hparams(source=str(tmp_path / "out"))
    mix = make_mixture(0.25)[0]
    with torch.no_grad():
        assert torch.allclose(model.separate_batch(mix), ref(mix), atol=1e-6)
    assert "PWNED" in json.loads((tmp_path / "out" / "config.json").read_text())["origin"]


def test_case_7_export_folder_names_are_data(tmp_path, marker):
    out, net = _run_folder(tmp_path, ckpt_name='CKPT+x\npwn: !apply:os.mkdir ["PWNED"]\n#')
    target = export_model(out, tmp_path / "hub")
    model = MambaSeparator.from_hparams(source=str(target))
    assert torch.equal(model.mods.separator.decoder.weight, net.decoder.weight)


def test_case_14_export_onto_its_own_run_is_refused(tmp_path, capsys):
    out, _ = _run_folder(tmp_path)
    (out / "test_results.csv").write_text("snt_id,si-snr\navg,1.0\n")
    before = _hashes(out)
    for target in (out, tmp_path):  # the run itself, or a folder holding it
        assert cli.main(["export", str(out), str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "choose another target" in err[0], err
    assert _hashes(out) == before
    # a training run folder (not a model) as the target of another export
    other = tmp_path / "other"
    other.mkdir()
    (other / "hyperparams.yaml").write_text("seed: 1\nlr: 0.1\n")
    assert cli.main(["export", str(out), str(other)]) == 2
    assert "not a model description" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["hyperparams.yaml"]


# ------------------------------------------------ 8, 9, 15: separate's outputs
def test_case_8_temporary_names_are_unpredictable(tmp_path):
    folder = tmp_path / "model"
    tiny_model_folder(folder)
    write_audio(tmp_path / "in" / "mix.wav", make_mixture(0.5)[0][0], 8000)
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "victim.wav").write_bytes(b"precious")
    for pid in range(os.getpid() - 50, os.getpid() + 50):  # every name the old code used
        for i in (1, 2):
            (out / f".mix_s{i}.{pid}.tmp.wav").symlink_to(outside / "victim.wav")
    assert cli.main(["separate", "--model", str(folder), str(tmp_path / "in"), "-o", str(out)]) == 0
    assert (outside / "victim.wav").read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.wav"]
    assert read_audio(out / "mix_s1.wav").shape == (4000,)
    assert not [p for p in out.iterdir() if p.name.startswith(".sbm-")]


class _Copy(torch.nn.Module):
    """A 'separator' returning the mixture and silence."""

    def forward(self, mix):
        return torch.stack([mix, 0 * mix], -1)


def test_case_9_outputs_stay_within_full_scale_after_resampling(tmp_path):
    t = np.arange(16000) / 16000
    square = np.sign(np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # full scale, 16 kHz
    write_audio(tmp_path / "sq.wav", square, 16000, subtype="PCM_16")
    model = MambaSeparator(
        {"separator": _Copy()}, {"sample_rate": 8000, "num_spks": 2}, run_opts={"device": "cpu"}
    )
    for mode in ("mixture", "peak"):
        model.separate_file(
            tmp_path / "sq.wav", normalize=mode, output_dir=tmp_path / mode, output_rate="input"
        )
        out = read_audio(tmp_path / mode / "sq_s1.wav", 16000)
        assert 0.8 < out.abs().max() <= 1.0
        assert read_audio(tmp_path / mode / "sq_s2.wav", 16000).abs().max() == 0


def test_case_15_a_linked_output_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_model_folder(folder)
    write_audio(tmp_path / "in" / "a.wav", make_mixture(0.5)[0][0], 8000)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert (
        cli.main(
            ["separate", "--model", str(folder), str(tmp_path / "in"), "-o", str(tmp_path / "link")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a link" in err[0]
    assert not list((tmp_path / "real").iterdir())


# --------------------------------------------------- 10, 11: make-mixtures
QUICK = dict(
    rir_bank=SAMPLES / "rir", n=(2, 1, 1), segment_seconds=0.5, speaker_split=(0, 0), seed=11
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixtures") / "data"
    make_mixtures(SAMPLES / "speech_8k", out, **QUICK)
    return out


def test_case_10_metadata_ids_stay_inside_out(dataset, tmp_path, capsys):
    text = (dataset / "metadata.csv").read_text()
    row_id = text.splitlines()[1].split(",")[3]
    for bad in ("../../escape", "/tmp/escape", ".hidden"):
        src = tmp_path / f"src{len(bad)}"
        src.mkdir()
        shutil.copy(dataset / "metadata.json", src)
        (src / "metadata.csv").write_text(text.replace(row_id, bad, 1))
        assert (
            cli.main(
                [
                    "make-mixtures",
                    str(tmp_path / "out"),
                    "--from-metadata",
                    str(src / "metadata.csv"),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a plain file name" in err[0], err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("escape*")) and not Path("/tmp/escape.wav").exists()


def test_case_11_killed_runs_leave_nothing_a_rerun_keeps(dataset, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(dataset, out)
    mixes = out / "wav8k" / "min" / "tr" / "mix_clean_reverb"
    # what a killed run leaves: temporary files of this version and of older ones
    (mixes / ".sbm-abcd1234.tmp").write_bytes(b"cut")
    (mixes / ".x_y.4242.tmp.wav").write_bytes(b"cut")
    (out / "wav8k" / "min" / "tr" / "s1_anechoic" / ".x_y.4242.tmp.wav").write_bytes(b"cut")
    # a preparer never takes one for a mixture
    prepare_whamr(out, tmp_path / "save", mix="mix_clean_reverb")
    assert ".tmp" not in (tmp_path / "save" / "train.csv").read_text()
    make_mixtures(SAMPLES / "speech_8k", out, **QUICK)  # the rerun
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    wavs = {k: v for k, v in _hashes(out).items() if k.suffix == ".wav"}
    assert wavs == {k: v for k, v in _hashes(dataset).items() if k.suffix == ".wav"}


# ---------------------------------------------------- 12, 16: recipe YAMLs
def _recipe_main(argv):
    """``python train.py ARGV`` of LibriMini (a fresh process, as a user runs it):
    (exit status, output)."""
    proc = run_train_py("LibriMini", *argv, check=False, timeout=300)
    return proc.returncode, proc.stdout


def test_case_12_misspelt_keys_inside_an_include(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        f"num_spks: 2\nmodel: !include:{hparams_path('models/sepmamba_s.yaml')}\n"
        "    num_spks: !ref <num_spks>\n    num_blocs: 1\n"
        "modules:\n    separator: !ref <model[separator]>\n"
    )
    with pytest.raises(
        UserError,
        match=r"r.yaml, line 4: num_blocs is not a key of "
        r"sepmamba_s.yaml .*did you mean num_blocks\?",
    ):
        load_hparams(path)
    path.write_text(path.read_text().replace("num_blocs", "num_blocks"))
    assert load_hparams(path)["modules"]["separator"].get_model_args()["num_blocks"] == 1


def test_case_16_nested_keys_and_duplicate_flags_exit_2(tmp_path):
    base = ["sepmamba.yaml", f"--output_folder={tmp_path / 'out'}", "--model_dim=8"]
    for args, message in [
        (
            ["--prepare_kwargs={n_vaild: 2}"],
            "prepare_kwargs: n_vaild is not an argument of prepare_librimini: did you mean "
            "n_valid?",
        ),
        (["--N_epochs=1", "--N_epochs=2"], "--N_epochs is given twice"),
    ]:
        code, out = _recipe_main([*base, *args])
        errors = [line for line in out.splitlines() if "UserError" in line]
        assert code == 2 and len(errors) == 1 and message in errors[0], out[-3000:]
        assert "Traceback" not in out


# ------------------------------------------------------ 17: sample rates
def test_case_17_sample_rates_are_checked(tmp_path, capsys):
    from sb_mamba.lobes.sepmamba import SepMamba

    src = tmp_path / "sepmamba.pth"
    torch.save(SepMamba(dim=8, num_blocks=1, d_state=4).state_dict(), src)
    for rate in ("10", "0", "1000000"):
        assert (
            cli.main(
                [
                    "convert",
                    str(src),
                    str(tmp_path / "out"),
                    "--model",
                    "sepmamba",
                    "--sample-rate",
                    rate,
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a sample rate" in err[0], err
    assert not (tmp_path / "out").exists()
    # a config.json edited to 10 Hz is refused at load
    folder = tmp_path / "model"
    tiny_model_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"sample_rate": 10}))
    with pytest.raises(UserError, match="sample_rate 10 is not a model rate"):
        MambaSeparator.from_hparams(source=str(folder))
    # and so is an old-layout folder declaring it
    folder = tmp_path / "old"
    tiny_model_folder(folder, "old")
    text = (folder / "hyperparams.yaml").read_text().replace("sample_rate: 8000", "sample_rate: 10")
    (folder / "hyperparams.yaml").write_text(text)
    with pytest.raises(UserError, match="sample_rate 10 is not a model rate"):
        MambaSeparator.from_hparams(source=str(folder))


# --------------------------------------------------- 18: output levels
def test_case_18_outputs_at_the_mixtures_level_on_many_mixtures():
    """The shipped model on 40 mixtures of the bundled speech (2 and 3 talkers,
    random crops and levels): the louder output is near the mixture's level.
    One gain for the sum left it a median 5.3 dB and up to 19.8 dB below."""
    model = MambaSeparator.from_hparams(source=pretrained_path("sepmamba-librimini-8k"))
    rel = []
    for i in range(40):
        gen = torch.Generator().manual_seed(i)
        offset = float(torch.rand(1, generator=gen)) * 2.5
        gains = tuple((torch.rand(3, generator=gen) * 10 - 5).tolist())
        mix, _ = make_mixture(1.5, num_spks=3 if i % 3 == 0 else 2, offset=offset, gains_db=gains)
        est = model.separate_signal(mix[0], chunk_seconds=None)
        level = 10 * torch.log10((est[0] ** 2).mean(0)) - 10 * torch.log10((mix**2).mean())
        rel.append(float(level.max()))
    assert statistics.median(rel) > -4.5 and min(rel) > -8.0, rel
    assert max(rel) < 1.0, rel


def test_case_18_polarity_flips_and_silent_outputs():
    mix, sources = make_mixture(1.0)
    est = torch.stack([37 * sources[..., 0], -52 * sources[..., 1]], -1)  # a flipped source
    out = normalize_sources(est, mix)
    assert torch.allclose(out, sources, atol=1e-4)
    single = sources[..., 0]
    for second in (torch.zeros_like(single), 1e-5 * torch.randn_like(single)):
        out = normalize_sources(torch.stack([40 * single, second], -1), single)
        assert torch.allclose(out[..., 0], single, atol=1e-4)
        assert out[..., 1].abs().max() <= 40 * second.abs().max() + 1e-12  # stays silent


# ----------------------------------------------------- smaller items
def test_long_names_that_fit_the_filesystem(tmp_path):
    folder = tmp_path / "model"
    tiny_model_folder(folder)
    name = "n" * 240 + ".wav"  # the output name (247 characters) fits in 255
    write_audio(tmp_path / "in" / name, make_mixture(0.5)[0][0], 8000)
    assert (
        cli.main(
            ["separate", "--model", str(folder), str(tmp_path / "in"), "-o", str(tmp_path / "out")]
        )
        == 0
    )
    assert sorted(len(p.name) for p in (tmp_path / "out").iterdir()) == [247, 247]


def test_a_full_disk_is_named_by_its_errno(tmp_path, monkeypatch, capsys):
    """A write cut by the file-size limit (EFBIG, in a child process) and one by a
    full disk (ENOSPC) say so; the run stops with one line; no temporary file stays."""
    code = (
        "import resource, signal, sys, torch; from sb_mamba.audio import write_audio\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "try:\n    write_audio(sys.argv[1], torch.zeros(80000), 8000)\n"
        "except OSError as e:\n    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "big.wav")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "File too large (EFBIG) while writing" in proc.stdout, proc.stdout + proc.stderr
    assert not list(tmp_path.iterdir())

    import sb_mamba.audio as audio

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    folder = tmp_path / "model"
    tiny_model_folder(folder)
    for name in ("a.wav", "b.wav"):
        write_audio(tmp_path / "in" / name, make_mixture(0.5)[0][0], 8000)
    init = audio._ErrnoFile.__init__
    monkeypatch.setattr(
        audio._ErrnoFile, "__init__", lambda self, f, failed: init(self, Full(f), failed)
    )
    assert (
        cli.main(
            ["separate", "--model", str(folder), str(tmp_path / "in"), "-o", str(tmp_path / "out")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "error" in line]
    assert len(err) == 1 and "No space left on device (ENOSPC)" in err[0], err
    assert not list((tmp_path / "out").iterdir())


def test_ctrl_c_inside_a_write_is_not_swallowed(tmp_path, monkeypatch, capfd):
    """A Ctrl-C that lands in libsndfile's write callback (cffi would print and
    swallow it) stops the write: the interrupt goes on, no file is left."""
    import sb_mamba.audio as audio

    class Interrupted:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

    init = audio._ErrnoFile.__init__
    monkeypatch.setattr(
        audio._ErrnoFile, "__init__", lambda self, f, failed: init(self, Interrupted(f), failed)
    )
    with pytest.raises(KeyboardInterrupt):
        write_audio(tmp_path / "a.wav", torch.zeros(8000), 8000)
    assert not list(tmp_path.iterdir())
    assert "Traceback" not in capfd.readouterr().err


def test_ctrl_c_ends_with_one_line(tmp_path):
    folder = tmp_path / "model"
    tiny_model_folder(folder)
    # ~20 s of work for the tiny model: the run must outlast a loaded machine's delay
    # between the first output and the signal (100 files of 3 s took 6 s and, once,
    # ended before the signal arrived)
    mix = make_mixture(3.0)[0][0].repeat(5)
    for i in range(60):
        write_audio(tmp_path / "in" / f"{i:03d}.wav", mix, 8000)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sb_mamba.cli",
            "separate",
            "--model",
            str(folder),
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 400  # a loaded machine starts slowly
    while time.time() < deadline and not (tmp_path / "out" / "000_s2.wav").exists():
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = "sb-mamba separate: interrupted (Ctrl-C); finished outputs are kept."
    assert err.count(line) == 1 and err.count("interrupted") == 1, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_deeply_nested_or_oversized_descriptions_are_one_line(tmp_path):
    folder = tmp_path / "json"
    tiny_model_folder(folder)
    (folder / "config.json").write_text("[" * 100000 + "]" * 100000)
    assert "not valid JSON" in _refused(folder)
    (folder / "config.json").write_text(" " * (5 << 20))
    assert "too big" in _refused(folder)
    folder = _old_folder_with(tmp_path, "x: " + "[" * 50000 + "]" * 50000, "yaml")
    assert "nested too deeply" in _refused(folder)
