"""``sb-mamba stream`` in a pipe and ``sb-mamba separate --stream``.

Authors
-------
 * sb_mamba developers
"""

import random
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from sb_mamba import cli
from tests.helpers import make_mixture, tiny_model_folder

BIN = [sys.executable, "-m", "sb_mamba.cli"]


def _model(tmp_path, causal=True):
    folder = tmp_path / ("causal" if causal else "bidir")
    net = tiny_model_folder(
        folder, causal=causal, stride=4, kernel_size=8, output="mask", ssm_backend="auto"
    )  # the backend of the returned model, not stored
    return folder, net


def _pcm(tmp_path, seconds=1.5):
    mix = make_mixture(seconds)[0][0]
    pcm = np.clip(np.rint(mix.numpy() * 0.5 * 32767), -32768, 32767).astype("<i2")
    return pcm


def _expected(net, pcm):
    """The offline model's output on the same 16-bit input, as 16-bit frames."""
    with torch.no_grad():
        est = net(torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None])[0].numpy()
    return np.clip(np.rint(est * 32767.0), -32768, 32767).astype("<i2")  # [T, S]


def _stream(folder, data, extra=(), pieces=True, stdout=subprocess.PIPE):
    proc = subprocess.Popen(
        [*BIN, "stream", str(folder), *extra],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    rng, a = random.Random(0), 0
    while a < len(data):  # odd-sized writes: samples split between writes
        n = rng.choice([1, 3, 77, 129, 1001]) if pieces else len(data)
        proc.stdin.write(data[a : a + n])
        proc.stdin.flush()
        a += n
    proc.stdin.close()
    out = proc.stdout.read() if stdout == subprocess.PIPE else b""
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), out, err


@pytest.fixture
def stream_in_process(tmp_path, capsysbinary, monkeypatch):
    """``sb-mamba stream`` through ``cli.main`` in this process, stdin read from a file."""

    def run(folder, data, extra=()):
        feed = tmp_path / "stdin.raw"
        feed.write_bytes(data)
        with open(feed) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            status = cli.main(["stream", str(folder), *extra])
        out, err = capsysbinary.readouterr()
        return status, out, err.decode()

    return run


def test_stream_pipe_equals_offline(tmp_path):
    folder, net = _model(tmp_path)
    pcm = _pcm(tmp_path)
    rc, out, err = _stream(folder, pcm.tobytes(), ["--chunk", "50"])
    assert rc == 0, err
    got = np.frombuffer(out, dtype="<i2").reshape(-1, 2)  # interleaved speakers
    want = _expected(net, pcm)
    assert got.shape == want.shape == (len(pcm), 2)
    assert np.abs(got.astype(int) - want).max() <= 1  # 16-bit rounding of float noise


def test_stream_errors_are_one_line(tmp_path, stream_in_process):
    """In this process (the pipe itself: tests above and below)."""
    stream = stream_in_process
    folder, net = _model(tmp_path)
    pcm = _pcm(tmp_path, 0.5)
    # an odd number of bytes: everything before the last byte is written, exit 2
    rc, out, err = stream(folder, pcm.tobytes() + b"\x01")
    assert rc == 2 and "odd number of bytes" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert len(out) == 2 * 2 * len(pcm)
    # a rate other than the model's
    rc, out, err = stream(folder, pcm.tobytes(), ["--rate", "16000"])
    assert rc == 2 and "8000 Hz" in err and len(err.strip().splitlines()) == 1
    # a model that cannot stream
    bidir, _ = _model(tmp_path, causal=False)
    rc, out, err = stream(bidir, pcm.tobytes())
    assert rc == 2 and "not causal" in err and len(err.strip().splitlines()) == 1
    assert out == b""


def test_stream_broken_pipe(tmp_path):
    folder, _ = _model(tmp_path)
    proc = subprocess.Popen(
        [*BIN, "stream", str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone
    try:
        proc.stdin.write(np.zeros(8000 * 20, "<i2").tobytes())
        proc.stdin.close()
    except BrokenPipeError:  # it may stop before reading everything
        pass
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 2, err
    assert "broken pipe" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_separate_stream_equals_offline(tmp_path, capsys):
    folder, _ = _model(tmp_path)
    sf.write(tmp_path / "mix.wav", make_mixture(1.2)[0][0].numpy() * 0.5, 8000)
    mix = str(tmp_path / "mix.wav")
    outs = {}
    for name, flags in (("offline", ["--chunk-seconds", "0"]), ("stream", ["--stream"])):
        status = cli.main(["separate", str(folder), mix, "-o", str(tmp_path / name), *flags])
        assert status == 0, capsys.readouterr().err
        outs[name] = [sf.read(tmp_path / name / f"mix_s{i}.wav")[0] for i in (1, 2)]
    for a, b in zip(outs["offline"], outs["stream"]):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    bidir, _ = _model(tmp_path, causal=False)
    capsys.readouterr()
    status = cli.main(["separate", str(bidir), mix, "-o", str(tmp_path / "x"), "--stream"])
    assert status == 2 and "not causal" in capsys.readouterr().err
