"""The installed console commands: one error policy, and the old names as aliases.

Each command, given an input that does not exist, exits 2 with one line on
stderr that names the path and no traceback (``sb_mamba.errors``).
"""

import os
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


def _assert_one_line_naming_the_missing_input(status, out, err, tmp_path, where):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (where, out, err)
    assert len(lines) == 1 and "does_not_exist" in lines[0], err
    assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists() and not (tmp_path / "model").exists()


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_missing_input_exits_2_with_one_line(command, tmp_path, capsys, monkeypatch):
    """In this process (``main`` returns the exit status): no interpreter start per case."""
    devnull = open(os.devnull)  # what a pipe that sends nothing looks like (stream reads fd 0)
    monkeypatch.setattr(sys, "stdin", devnull)
    with devnull:
        status = cli.main([command, *_missing_input_cases(tmp_path)[command]])
    out, err = capsys.readouterr()
    _assert_one_line_naming_the_missing_input(status, out, err, tmp_path, command)


def test_missing_input_through_the_console_script(tmp_path):
    """The installed ``sb-mamba`` turns ``main``'s status into the exit code."""
    argv = [str(BIN / "sb-mamba"), "separate", *_missing_input_cases(tmp_path)["separate"]]
    proc = _run(argv)
    _assert_one_line_naming_the_missing_input(
        proc.returncode, proc.stdout, proc.stderr, tmp_path, argv
    )


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's way, as the console script exits
        cli.main(["separate", "a.wav"])  # no -o
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().count("\n") == 0 and "--output-dir" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "run", broken)  # what "separate" runs
    with pytest.raises(KeyError):
        cli.main(["separate", "a.wav", "-o", str(tmp_path)])


def test_separate_in_int8_and_refused_precisions(tmp_path, capsys):
    import soundfile as sf

    from tests.helpers import make_mixture, tiny_model_folder

    folder = tmp_path / "model"
    tiny_model_folder(folder, ssm_backend="auto")
    wav = tmp_path / "mix.wav"
    sf.write(wav, make_mixture(1.0)[0][0].numpy(), 8000)
    sep = ["separate", str(folder), str(wav)]
    assert cli.main([*sep, "-o", str(tmp_path / "int8"), "--precision", "int8"]) == 0
    outs = sorted((tmp_path / "int8").rglob("*.wav"))
    assert len(outs) == 2 and all(sf.info(o).frames == 8000 for o in outs)
    capsys.readouterr()
    status = cli.main([*sep, "-o", str(tmp_path / "fp16"), "--precision", "fp16"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "fp16 is for GPUs" in lines[0]
    assert not (tmp_path / "fp16").exists()
