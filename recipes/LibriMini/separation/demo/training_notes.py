#!/usr/bin/env python3
"""Model-card section for the demo model: command, budget and validation curve.

    python demo/training_notes.py RUN_FOLDER > notes.md

Reads ``RUN_FOLDER/train_log.txt`` (one line per epoch) and
``RUN_FOLDER/hyperparams.yaml`` (epoch size and batch size).

Authors
-------
 * sb_mamba developers
"""

import re
import sys
from pathlib import Path

import yaml


def main(run):
    run = Path(run)
    hp = yaml.safe_load(re.sub(r"!\S+", "", (run / "hyperparams.yaml").read_text()))
    steps_per_epoch = -(-int(hp["epoch_size"]) // int(hp["batch_size"]))
    rows = []
    for line in (run / "train_log.txt").read_text().splitlines():
        epoch = re.search(r"epoch: (\d+)", line)
        sisnri = re.search(r"valid si-snri: ([-+.\de]+)", line)
        lr = re.search(r"lr: ([-+.\de]+)", line)
        if epoch and sisnri:
            rows.append((int(epoch.group(1)), float(lr.group(1)), float(sisnri.group(1))))
    out = [
        "## Training", "",
        "Trained on CPU (a 2-core machine shared with development work) with the LibriMini",
        "recipe, in several sessions resumed from the last checkpoint:",
        "`cd recipes/LibriMini/separation && bash demo/train_demo.sh` (SepMamba, dim 64,",
        "one Mamba block per direction; dynamic mixing of the 150 bundled LibriSpeech",
        f"train speakers at 8 kHz, batch {hp['batch_size']} x {hp['segment_seconds']} s, "
        f"{steps_per_epoch} steps per epoch).",
        f"Epochs so far: {len(rows)} ({len(rows) * steps_per_epoch} optimizer steps).",
        "Validation: 50 fixed 4 s mixtures of 20 held-out speakers; test: 100 mixtures of",
        "20 other held-out speakers. `train_log.txt` is the full log.", "",
        "| epoch | steps | lr | valid SI-SNRi (dB) |", "|---|---|---|---|",
    ]
    out += [f"| {e} | {e * steps_per_epoch} | {lr:.2e} | {v:.2f} |" for e, lr, v in rows]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
