"""The installed console commands: one error policy, and the old names as aliases.

Each command, given an input that does not exist, exits 2 with one line on
stderr that names the path and no traceback (``sb_mamba.errors``).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from sb_mamba import cli

BIN = Path(sys.executable).parent


def _missing_input_cases(tmp):
    missing = tmp / "does_not_exist"
    return {
        "separate": [f"{missing}.wav", "-o", str(tmp / "out")],
        "export": [str(missing), str(tmp / "model")],
        "make-mixtures": [str(tmp / "set"), "--speech", str(missing)],
        "make-rir-bank": [str(tmp / "bank"), "--index-measured", str(missing)],
        "convert": [str(missing) + ".ckpt", str(tmp / "model")],
        "migrate": [str(missing)],
        "stream": [str(missing)],
    }


def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_missing_input_exits_2_with_one_line(command, tmp_path):
    args = _missing_input_cases(tmp_path)[command]
    argv = [str(BIN / "sb-mamba"), command, *args]
    proc = _run(argv)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
    assert len(lines) == 1 and "does_not_exist" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "model").exists()


def test_argument_errors_are_one_line(tmp_path):
    proc = _run([str(BIN / "sb-mamba"), "separate", "a.wav"])  # no -o
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--output-dir" in proc.stderr
    proc = _run([str(BIN / "sb-mamba"), "no-such-command"])
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "run", broken)  # what "separate" runs
    with pytest.raises(KeyError):
        cli.main(["separate", "a.wav", "-o", str(tmp_path)])


def test_separate_in_int8_and_refused_precisions(tmp_path):
    import soundfile as sf

    from tests.helpers import make_mixture, tiny_model_folder

    folder = tmp_path / "model"
    tiny_model_folder(folder, ssm_backend="auto")
    wav = tmp_path / "mix.wav"
    sf.write(wav, make_mixture(1.0)[0][0].numpy(), 8000)
    sep = [str(BIN / "sb-mamba"), "separate", str(folder), str(wav)]
    proc = _run([*sep, "-o", str(tmp_path / "int8"), "--precision", "int8"])
    assert proc.returncode == 0, proc.stderr
    outs = sorted((tmp_path / "int8").rglob("*.wav"))
    assert len(outs) == 2 and all(sf.info(o).frames == 8000 for o in outs)
    proc = _run([*sep, "-o", str(tmp_path / "fp16"), "--precision", "fp16"])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "fp16 is for GPUs" in lines[0]
    assert not (tmp_path / "fp16").exists()
