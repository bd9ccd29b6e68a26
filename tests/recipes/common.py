"""Helpers to run recipes as a user would: ``python train.py hparams/X.yaml``.

Authors
-------
 * sb_mamba developers
"""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


def recipe_cmd(recipe, yaml, *args, launcher=None):
    """Command line of ``train.py`` for ``recipes/<recipe>/separation``."""
    launcher = launcher or [sys.executable]
    return [*launcher, "train.py", f"hparams/{yaml}", *args]


def run_recipe(recipe, yaml, *args, timeout=600, launcher=None, check=True):
    """Run a recipe in its folder; return the CompletedProcess (output merged)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        recipe_cmd(recipe, yaml, *args, launcher=launcher),
        cwd=RECIPES / recipe / "separation",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"recipe failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def read_results(output_folder):
    """Rows of ``test_results.csv``; asserts the avg row and finite numbers."""
    path = Path(output_folder) / "test_results.csv"
    assert path.is_file(), f"{path} was not written"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[-1]["snt_id"] == "avg", rows
    for row in rows:
        for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
            assert math.isfinite(float(row[key])), (key, row)
    return rows
