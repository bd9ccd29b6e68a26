"""Fuzz: a few hundred WAV/FLAC files with mutated headers, one CLI run.

No traceback, no file outside OUT, bounded memory, and every good file in the
folder still separated.
"""

import os
import random
import struct
import subprocess
import sys

import pytest
import torch

from sb_mamba.audio import write_audio
from tests.helpers import PEAK_RSS_CLI, make_mixture
from tests.unittests.test_safety import tiny_model_folder

N_MUTANTS = 300


def _mutants(good, rng):
    """Byte strings derived from the good files' headers (seeded)."""
    out = []
    for i in range(N_MUTANTS):
        name, data = good[i % len(good)]
        data = bytearray(data)
        kind = rng.randrange(6)
        if kind == 0:  # random bytes in the header
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
        elif kind == 1 and name.endswith(".wav"):  # extreme header fields
            field = rng.choice([(22, "<H"), (24, "<I"), (40, "<I"), (4, "<I"), (34, "<H")])
            value = rng.choice(
                [0, 1, 2, 255, 65535, 2**31 - 1, 2**32 - 1][: 5 if field[1] == "<H" else 7]
            )
            struct.pack_into(field[1], data, field[0], value)
        elif kind == 2:  # truncated
            data = data[: rng.randrange(0, min(200, len(data)))]
        elif kind == 3:  # header of one, body of random bytes
            data = data[:64] + bytearray(os.urandom(rng.randrange(0, 4000)))
        elif kind == 4 and name.endswith(".flac"):  # STREAMINFO fields
            for _ in range(3):
                data[rng.randrange(8, 42)] = rng.randrange(256)
        else:  # one random byte anywhere
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        out.append((f"mut{i:03d}{os.path.splitext(name)[1]}", bytes(data)))
    return out


@pytest.mark.slow
def test_mutated_headers_never_break_the_cli(tmp_path):
    model = tmp_path / "model"
    tiny_model_folder(model)
    data, out = tmp_path / "data", tmp_path / "out"
    mix = make_mixture(0.5)[0][0]
    write_audio(data / "good_float.wav", mix, 8000)
    write_audio(data / "good_pcm16.wav", mix, 8000, subtype="PCM_16")
    write_audio(data / "good.flac", torch.cat([mix, mix]), 16000, subtype="PCM_16")
    good = [(p.name, p.read_bytes()) for p in sorted(data.iterdir())]
    for name, blob in _mutants(good, random.Random(1234)):
        (data / name).write_bytes(blob)
    before = {p for p in tmp_path.rglob("*")}

    code = PEAK_RSS_CLI
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "separate",
            "--model",
            str(model),
            str(data),
            "-o",
            str(out),
            "--max-hours",
            "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    rss_mb = int(proc.stdout.split("VmHWM:")[1].split()[0]) / 1024
    assert rss_mb < 1500, rss_mb
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents for p in new), sorted(new)[:5]
    for name, _ in good:
        stem = os.path.splitext(name)[0]
        assert (out / f"{stem}_s1.wav").is_file() and (out / f"{stem}_s2.wav").is_file()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no temp file left
