"""Untrusted models, hostile files, bad outputs: nothing foreign runs, nothing
is written where it should not be, every refusal names the problem.

Each attack plants a payload that would create a marker file; the tests check
that the marker is absent and that the error says what was refused.
"""

import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb_mamba import cli
from sb_mamba.audio import AudioError, read_audio, write_audio
from sb_mamba.errors import UserError
from sb_mamba.inference import MambaSeparator
from sb_mamba.modelfolder import read_run_hparams
from sb_mamba.resources import pretrained_path
from tests.helpers import PEAK_RSS_CLI, make_mixture, tiny_model_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a payload ran"


PAYLOADS = [
    ('pwn: !apply:os.system ["touch {m}"]', "!apply:os.system"),
    ('pwn: !new:subprocess.Popen [["touch", "{m}"]]', "!new:subprocess.Popen"),
    ("pwn: !apply:builtins.eval [\"open('{m}', 'w')\"]", "!apply:builtins.eval"),
    ("pwn: !name:os.system", "!name:os.system"),
    ('pwn: !new:sb_mamba.lobes.sepmamba.os.system ["touch {m}"]', "sepmamba.os.system"),
    (
        'pwn: !new:speechbrain.utils.parameter_transfer.os.system ["touch {m}"]',
        "parameter_transfer.os.system",
    ),
]


@pytest.mark.parametrize("payload, named", PAYLOADS)
def test_old_layout_payloads_never_run(tmp_path, marker, payload, named):
    """An old-layout folder is read as data: any key or tag beyond what the old
    exporter wrote is refused with one line naming the line and the fix."""
    folder = tmp_path / "model"
    tiny_model_folder(folder, "old", "\n" + payload.format(m=marker) + "\n")
    with pytest.raises(UserError, match=r"hyperparams.yaml, line \d+: ") as e:
        MambaSeparator.from_hparams(source=str(folder))
    assert "sb-mamba export RUN_FOLDER" in str(e.value) and "\n" not in str(e.value)


def test_payload_through_the_cli_exits_2(tmp_path, marker, capsys):
    folder = tmp_path / "model"
    tiny_model_folder(folder, "old", f'\npwn: !apply:os.system ["touch {marker}"]\n')
    write_audio(tmp_path / "in" / "a.wav", make_mixture(0.5)[0][0], 8000)
    assert (
        cli.main(["separate", str(folder), str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected key 'pwn'" in err[0]


def test_includes_and_links_that_leave_the_folder(tmp_path, marker):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.yaml").write_text(f'x: !apply:os.system ["touch {marker}"]\n')
    for extra in (
        "leak: !include:/etc/passwd",
        "leak: !include:../outside/evil.yaml",
        "more: !include:more.yaml",
    ):
        folder = tmp_path / f"m{len(extra)}"
        tiny_model_folder(folder, "old", "\n" + extra + "\n")
        (folder / "more.yaml").write_text("note: 1\n")
        with pytest.raises(UserError, match="unexpected key"):
            MambaSeparator.from_hparams(source=str(folder))
    # any file of either layout as a link out of the folder
    for layout, name in [
        ("old", "hyperparams.yaml"),
        ("old", "separator.ckpt"),
        ("new", "config.json"),
        ("new", "separator.safetensors"),
    ]:
        folder = tmp_path / f"link_{name}"
        tiny_model_folder(folder, layout)
        shutil.move(folder / name, outside / name)
        (folder / name).symlink_to(outside / name)
        with pytest.raises(UserError, match="outside the model folder"):
            MambaSeparator.from_hparams(source=str(folder))


def test_weights_that_pickle_code_are_refused(tmp_path, marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "model"
    net = tiny_model_folder(folder, "old")
    state = dict(net.state_dict(), extra=Payload())
    with open(folder / "separator.ckpt", "wb") as f:
        pickle.dump(state, f)  # what torch.save would write around a payload
    torch.save(state, folder / "separator.ckpt")
    with pytest.raises(UserError, match="holds a .*system object.*not loaded"):
        MambaSeparator.from_hparams(source=str(folder))


def test_trust_remote_code_has_no_effect(tmp_path, caplog, marker):
    folder = tmp_path / "model"
    tiny_model_folder(folder, "old", f'\nran: !apply:os.system ["touch {marker}"]\n')
    with caplog.at_level("WARNING"), pytest.raises(UserError, match="unexpected key 'ran'"):
        MambaSeparator.from_hparams(source=str(folder), trust_remote_code=True)
    assert "has no effect" in caplog.text


def test_the_shipped_model_loads_as_data():
    folder = Path(pretrained_path("sepmamba-librimini-8k"))
    assert sorted(p.name for p in folder.glob("*.json")) == ["config.json"]
    assert not (folder / "hyperparams.yaml").exists()  # migrated: nothing to run
    model = MambaSeparator.from_hparams(source=str(folder))
    assert model.num_spks == 2 and model.sample_rate == 8000


def test_export_resolves_the_class_not_the_string(tmp_path, marker):
    for path in (
        "torch.utils.cpp_extension.subprocess.Popen",
        "sb_mamba.lobes.sepmamba.subprocess.Popen",
        "os.system",
    ):
        text = f"modules:\n    separator: !new:{path}\n        args: [touch, {marker}]\n"
        (tmp_path / "h.yaml").write_text(text)
        with pytest.raises(UserError, match="not a separator of sb_mamba"):
            read_run_hparams(tmp_path / "h.yaml")


def test_run_yaml_without_sample_rate_is_refused(tmp_path):
    """Export never assumes a rate: a run YAML without one is refused, naming the fix."""
    (tmp_path / "h.yaml").write_text(
        "modules:\n    separator: !new:sb_mamba.lobes.sepmamba.SepMamba\n        dim: 8\n"
    )
    with pytest.raises(UserError, match="has no sample_rate .*add e.g. `sample_rate: 8000`"):
        read_run_hparams(tmp_path / "h.yaml")


# ---------------------------------------------------------------- outputs
@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    tiny_model_folder(folder)
    return folder


def _separate(model_folder, *args):
    return cli.main(["separate", "--model", str(model_folder), *map(str, args)])


def test_outputs_never_follow_links(tmp_path, model_folder):
    data, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    mix = make_mixture(0.5)[0][0]
    write_audio(data / "a.wav", mix, 8000)
    write_audio(data / "sub" / "b.wav", mix, 8000)
    outside.mkdir()
    (outside / "victim.wav").write_bytes(b"precious")
    out.mkdir()
    (out / "a_s1.wav").symlink_to(outside / "victim.wav")  # a link at a target
    (out / "a_s2.wav").symlink_to(outside / "dangling.wav")  # a dangling one
    (out / "sub").symlink_to(outside, target_is_directory=True)  # a linked folder
    assert _separate(model_folder, data, "-o", out, "--force") == 1  # sub/b.wav skipped
    assert (outside / "victim.wav").read_bytes() == b"precious"
    assert not (outside / "dangling.wav").exists() and not (outside / "b_s1.wav").exists()
    assert not (out / "a_s1.wav").is_symlink() and read_audio(out / "a_s1.wav").shape == (4000,)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a_s1.wav",
        "a_s2.wav",
        "sub",
    ]


def test_partial_sets_errors_mid_folder_and_output_folders(tmp_path, model_folder, capsys):
    data, out = tmp_path / "in", tmp_path / "out"
    mix = make_mixture(0.5)[0][0]
    for name in ("a.wav", "b.wav", "sub/c.wav"):
        write_audio(data / name, mix, 8000)
    out.mkdir()
    (out / "sub").write_text("a file where a folder goes")  # OSError for sub/c.wav only
    write_audio(out / "a_s1.wav", torch.zeros(10), 8000)  # a set missing a_s2.wav
    assert _separate(model_folder, data, "-o", out) == 1
    assert read_audio(out / "a_s1.wav").shape == (4000,)  # the partial set was redone
    assert (out / "a_s2.wav").is_file() and (out / "b_s2.wav").is_file()
    err = capsys.readouterr().err
    assert "sub/c.wav" in err.replace(os.sep, "/") and "Traceback" not in err
    # -o inside (or equal to) an input folder, or naming a file
    for bad in (data, data / "separated", out / "a_s1.wav"):
        assert _separate(model_folder, data, "-o", bad) == 2
    assert not (data / "separated").exists()


def test_shipped_model_outputs_stay_within_full_scale(tmp_path):
    mix = Path(pretrained_path()) / "test_mixture.wav"
    assert cli.main(["separate", str(mix), "-o", str(tmp_path), "--sample-rate", "input"]) == 0
    peak_in = read_audio(mix).abs().max()
    for i in (1, 2):
        est = read_audio(tmp_path / f"test_mixture_s{i}.wav", 8000)
        assert 0.05 * peak_in < est.abs().max() <= 1.0


def test_sample_rate_input_writes_the_input_rate(tmp_path, model_folder):
    write_audio(
        tmp_path / "in" / "a.flac", make_mixture(0.5)[0][0].repeat(2), 16000, subtype="PCM_16"
    )
    assert (
        _separate(
            model_folder,
            tmp_path / "in" / "a.flac",
            "-o",
            tmp_path / "out",
            "--sample-rate",
            "input",
        )
        == 0
    )
    assert read_audio(tmp_path / "out" / "a_s1.wav", 16000).shape == (8000,)


# ----------------------------------------------------------------- inputs
def _wav_header(sample_rate, frames, channels=1, bits=16):
    data = frames * channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            channels,
            sample_rate,
            sample_rate * channels * bits // 8,
            channels * bits // 8,
            bits,
        )
        + b"data"
        + struct.pack("<I", data)
    )


def test_one_hertz_and_oversized_files_are_refused(tmp_path):
    small = tmp_path / "one_hz.wav"
    small.write_bytes(_wav_header(1, 100) + os.urandom(200))  # 244 bytes
    big = tmp_path / "one_hz_64k.wav"
    big.write_bytes(_wav_header(1, 32000) + os.urandom(64000))
    for path in (small, big):
        with pytest.raises(AudioError, match="1 Hz"):
            read_audio(path, 8000, resample_to_rate=True)
    write_audio(tmp_path / "long.wav", torch.zeros(16000), 16000)
    with pytest.raises(AudioError, match="over the limit of 1000"):
        read_audio(tmp_path / "long.wav", max_samples=1000)
    with pytest.raises(AudioError, match="over the limit"):  # resampled size counts too
        read_audio(tmp_path / "long.wav", 48000, resample_to_rate=True, max_samples=20000)


def test_huge_values_give_an_error_and_no_file(tmp_path, model_folder, capsys):
    write_audio(tmp_path / "in" / "loud.wav", make_mixture(0.5)[0][0] * 1e20, 8000)
    write_audio(tmp_path / "in" / "ok.wav", make_mixture(0.5)[0][0], 8000)
    assert _separate(model_folder, tmp_path / "in", "-o", tmp_path / "out") == 1
    assert "NaN/infinite" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_s1.wav", "ok_s2.wav"]


def test_cli_memory_stays_bounded_on_huge_headers_and_long_files(tmp_path, model_folder):
    """A header declaring ~1.1e9 frames is read as what the file holds (libsndfile
    clamps it); a file past --max-hours is refused before decoding."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.wav").write_bytes(_wav_header(8000, 2**30 - 64) + os.urandom(4096))
    write_audio(tmp_path / "in" / "long.wav", torch.zeros(8000 * 10), 8000)
    code = PEAK_RSS_CLI
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "separate",
            "--model",
            str(model_folder),
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "--max-hours",
            "0.0001",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "long.wav" in proc.stderr and "over the limit" in proc.stderr
    rss_mb = int(proc.stdout.split("VmHWM:")[1].split()[0]) / 1024
    assert rss_mb < 1500, rss_mb


def test_hub_models_refresh_savedir_from_the_source(tmp_path, marker, monkeypatch):
    """Files planted in savedir never stand in for the hub's."""
    import speechbrain.utils.fetching as fetching

    hub = tmp_path / "hub" / "owner--tiny"
    net = tiny_model_folder(hub)
    fetched = []

    def fake_fetch(filename, source, savedir=None, local_strategy=None, fetch_config=None):
        assert source == "owner/tiny" and fetch_config.overwrite
        fetched.append(filename)
        target = Path(savedir) / filename
        assert not target.exists()  # what was there is gone before the copy
        shutil.copy(hub / filename, target)
        return target

    monkeypatch.setattr(fetching, "fetch", fake_fetch)
    savedir = tmp_path / "savedir"
    tiny_model_folder(savedir, "old", f'\npwn: !apply:os.system ["touch {marker}"]\n')
    (savedir / "separator.safetensors").write_bytes(b"planted")
    model = MambaSeparator.from_hparams(source="owner/tiny", savedir=str(savedir))
    assert fetched == ["config.json", "separator.safetensors"]
    for k, v in net.state_dict().items():
        assert torch.equal(model.mods.separator.state_dict()[k], v)
    assert not (savedir / "hyperparams.yaml").exists()  # the planted one is gone


def test_hub_models_in_the_old_layout_load_as_data(tmp_path, monkeypatch, caplog):
    """A hub repo exported before model folders became data: its old files are
    fetched and read by the migration path (with the hint to migrate)."""
    import speechbrain.utils.fetching as fetching

    hub = tmp_path / "hub"
    net = tiny_model_folder(hub, "old")

    def fake_fetch(filename, source, savedir=None, local_strategy=None, fetch_config=None):
        if not (hub / filename).exists():
            raise ValueError(f"{filename} not found in {source}")
        shutil.copy(hub / filename, Path(savedir) / filename)
        return Path(savedir) / filename

    monkeypatch.setattr(fetching, "fetch", fake_fetch)
    (tmp_path / "savedir").mkdir()
    with caplog.at_level("WARNING"):
        model = MambaSeparator.from_hparams(source="owner/old", savedir=str(tmp_path / "savedir"))
    assert "sb-mamba migrate" in caplog.text
    assert torch.equal(model.mods.separator.decoder.weight, net.decoder.weight)


def test_export_over_an_old_layout_folder_replaces_it(tmp_path):
    """Re-exporting into a folder of the old layout (e.g. a shipped model) leaves
    the new layout only; other files (training log, figures) are kept."""
    from sb_mamba.modelfolder import ModelConfig, write_folder

    folder = tmp_path / "model"
    net = tiny_model_folder(folder, "old")
    (folder / "train_log.txt").write_text("kept")
    config = ModelConfig("sb_mamba.lobes.sepmamba.SepMamba", net.get_model_args(), 8000, 2)
    write_folder(folder, config, net.state_dict(), card="# card\n", fp16=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "separator.safetensors",
        "train_log.txt",
    ]
    model = MambaSeparator.from_hparams(source=str(folder))
    assert next(model.mods.parameters()).dtype == torch.float32
