"""LibriMini recipe: debug run, kill-and-resume, DDP on CPU, bad input.

Authors
-------
 * sb_mamba developers
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import RECIPES, read_results, recipe_cmd, run_train_py

TINY = [
    "--model_dim=8",
    "--epoch_size=4",
    "--batch_size=2",
    "--segment_seconds=0.5",
    "--prepare_kwargs={n_valid: 2, n_test: 2, segment_seconds: 1.0}",
    "--n_audio_to_save=1",
]


def test_debug_epoch_writes_results(tmp_path):
    out = tmp_path / "run"
    proc = run_train_py(
        "LibriMini", "sepmamba.yaml", f"--output_folder={out}", "--N_epochs=1", *TINY
    )
    rows = read_results(out)
    assert len(rows) == 3  # 2 test mixtures + avg
    assert "ssm_backend auto -> " in proc.stdout
    assert (out / "audio_results").is_dir() and any((out / "audio_results").glob("*_s1hat.wav"))
    assert "valid si-snr" in (out / "train_log.txt").read_text()

    # SpeechBrain's own --test_only flag: evaluate the best checkpoint, no training
    (out / "test_results.csv").unlink()
    proc = run_train_py(
        "LibriMini", "sepmamba.yaml", f"--output_folder={out}", "--N_epochs=2", "--test_only", *TINY
    )
    assert "Going into epoch" not in proc.stdout, proc.stdout[-3000:]
    assert len(read_results(out)) == 3


def _ckpt_meta(save):
    metas = []
    for ck in sorted(Path(save).glob("CKPT+*")):
        try:  # while training runs, SpeechBrain replaces old intra-epoch checkpoints
            metas.append((ck, yaml.safe_load((ck / "CKPT.yaml").read_text()) or {}))
        except OSError:  # deleted meanwhile, or cut by the kill before CKPT.yaml
            continue
    return metas


INTRA = "brain_intra_epoch_ckpt"  # SpeechBrain's flag of intra-epoch checkpoints


def test_kill_and_resume(tmp_path):
    """SIGKILL after the first intra-epoch checkpoint, restart, and finish."""
    out = tmp_path / "run"
    args = [
        f"--output_folder={out}",
        "--N_epochs=1",
        "--model_dim=8",
        "--epoch_size=120",
        "--batch_size=2",
        "--segment_seconds=0.5",
        "--n_audio_to_save=0",
        "--prepare_kwargs={n_valid: 2, n_test: 2, segment_seconds: 1.0}",
        "--ckpt_interval_minutes=0",
        "--ckpt_interval_steps=3",
    ]
    cwd = RECIPES / "LibriMini" / "separation"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        recipe_cmd("LibriMini", "sepmamba.yaml", *args),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    save = out / "save"
    deadline = time.time() + 400
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        intra = [m for _, m in _ckpt_meta(save) if m.get(INTRA)] if save.is_dir() else []
        if intra:
            time.sleep(0.5)  # let the brain get a little past the checkpoint
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = intra[0]
            break
        time.sleep(0.2)
    assert killed_at is not None, (tmp_path / "first.log").read_text()[-3000:]
    # Every checkpoint left on disk loads.
    for ck, _ in _ckpt_meta(save):
        for f in ck.glob("*.ckpt"):
            if f.name == "brain.ckpt":
                assert "optimizer_step" in yaml.safe_load(f.read_text())
            elif f.name == "counter.ckpt" or "dataloader" in f.name:
                int(f.read_text())  # plain-text counters
            else:
                torch.load(f, map_location="cpu")
    # the newest intra-epoch checkpoint is the one the resume loads (the kill may land
    # between saving a new one and deleting the old one, leaving two)
    newest = max(
        (pair for pair in _ckpt_meta(save) if pair[1].get(INTRA)),
        key=lambda pair: pair[1]["unixtime"],
    )[0]
    saved = yaml.safe_load((newest / "brain.ckpt").read_text())
    assert saved["optimizer_step"] > 0

    second = run_train_py("LibriMini", "sepmamba.yaml", *args)
    m = re.search(r"at step (\d+) of that epoch \(optimizer step (\d+)\) - resumed", second.stdout)
    assert m, second.stdout[-3000:]
    assert int(m.group(1)) == saved["step"] and int(m.group(2)) == saved["optimizer_step"]
    # The epoch was finished from there: 120 mixtures / batch 2 = 60 optimizer steps in all.
    final = [
        yaml.safe_load((c / "brain.ckpt").read_text())
        for c, mt in _ckpt_meta(save)
        if not mt.get(INTRA)
    ]
    assert final and final[-1]["optimizer_step"] == 60
    read_results(out)


@pytest.mark.skipif(os.environ.get("SB_MAMBA_SKIP_DDP") == "1", reason="DDP disabled")
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={out}",
        "--N_epochs=1",
        *TINY,
        "--distributed_backend=gloo",
        launcher=[
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
        ],
    )
    assert "Effective batch size: 4 (batch_size 2 x 2 process(es)" in proc.stdout
    read_results(out)


def test_missing_data_folder_is_one_clear_error(tmp_path):
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={tmp_path}",
        f"--data_folder={tmp_path}/nope",
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "LibriMini expects" in proc.stdout and "set data_folder" in proc.stdout


def test_wrong_yaml_key_is_one_clear_error(tmp_path):
    proc = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={tmp_path}",
        "--N_epoch=3",
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "N_epoch" in proc.stdout and "check its spelling" in proc.stdout
