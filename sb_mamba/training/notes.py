"""Learning curve and model-card training section of a long CPU training run.

    python -m sb_mamba.training.notes RUN_FOLDER OUT_FOLDER --name NAME \
        --recipe-dir recipes/<Recipe>/separation --train-script demo/train_X.sh \
        --export-script demo/export_X.sh --data "..." --eval "..."

Reads ``RUN_FOLDER/train_log.txt`` (one line per epoch, with the epoch's
training CPU minutes), ``RUN_FOLDER/hyperparams.yaml`` (epoch and batch
size) and, if present, ``RUN_FOLDER/history.csv``: the learning curve of the
model the run was warm-started from (the demo training scripts copy the
shipped model's ``learning_curve.csv`` there on the first start). Writes to
``OUT_FOLDER``:

* ``learning_curve.csv``: history + this run, one row per epoch, with
  cumulative optimizer steps and CPU-hours;
* ``learning_curve.png``: validation SI-SNRi against steps and CPU-hours;
* ``notes.md``: the model card's training section, with a log-linear fit of
  the curve (dB per doubling of CPU-hours) and the CPU-hours it predicts for
  a target SI-SNRi on the test speakers (from ``OUT_FOLDER/test_results.csv``,
  written by the export script's evaluation; the gap between the
  validation and the test speakers is carried over).

The LibriMini demo model (``recipes/LibriMini/separation/demo``) and the
general model (``recipes/General/separation/demo``) both use it.

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import math
import re
from pathlib import Path

import yaml

from sb_mamba.modelfolder import read_test_results

FIELDS = [
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


def run_rows(run, history, label=None):
    """This run's epochs as curve rows, continuing ``history``'s counters."""
    hp = yaml.safe_load(re.sub(r"!\S+", "", (run / "hyperparams.yaml").read_text()))
    steps_per_epoch = -(-int(hp["epoch_size"]) // int(hp["batch_size"]))
    steps = int(history[-1]["steps"]) if history else 0
    hours = float(history[-1]["cpu_hours"]) if history else 0.0
    label = label or f"run {len({r['run'] for r in history}) + 1}"
    rows = []
    for line in (run / "train_log.txt").read_text().splitlines():
        epoch = re.search(r"epoch: (\d+)", line)
        sisnri = re.search(r"valid si-snri: ([-+.\de]+)", line)
        if not (epoch and sisnri):
            continue
        cpu = re.search(r"train cpu-minutes: ([-+.\de]+)", line)
        steps += steps_per_epoch
        hours += float(cpu.group(1)) / 60 if cpu else 0.0
        rows.append(
            dict(
                run=label,
                epoch=int(epoch.group(1)),
                steps=steps,
                cpu_hours=round(hours, 6),
                cpu_estimated=0 if cpu else 1,
                lr=float(re.search(r"lr: ([-+.\de]+)", line).group(1)),
                batch_size=hp["batch_size"],
                segment_seconds=hp["segment_seconds"],
                valid_si_snri=float(sisnri.group(1)),
            )
        )
    return rows


def plot(rows, png, name="model"):
    """Validation SI-SNRi against optimizer steps and against CPU-hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for run in dict.fromkeys(r["run"] for r in rows):
        part = [r for r in rows if r["run"] == run]
        y = [float(r["valid_si_snri"]) for r in part]
        axes[0].plot([int(r["steps"]) for r in part], y, marker=".", label=run)
        axes[1].plot([float(r["cpu_hours"]) for r in part], y, marker=".", label=run)
    axes[0].set_xlabel("optimizer steps")
    estimated = sorted({r["run"] for r in rows if str(r.get("cpu_estimated", "0")) == "1"})
    axes[1].set_xlabel(
        "CPU-hours (process CPU time"
        + (f"; {', '.join(estimated)} estimated)" if estimated else ")")
    )
    axes[0].set_ylabel("valid SI-SNRi (dB), held-out speakers")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: learning curve")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def extrapolate(rows, target_db, from_hours=1.0):
    """Fit ``valid = a + b * log2(CPU-hours)`` and solve it for ``target_db``.

    Only epochs after ``from_hours`` CPU-hours are fitted (the first hour is
    the steep start), or after half of the curve's CPU-hours when it is
    shorter than two hours. Returns ``(b, hours)``: dB gained per doubling of the
    CPU time, and the CPU-hours at which the fit reaches ``target_db``
    (``inf`` when the fit does not rise).

    Example
    -------
    >>> rows = [dict(cpu_hours=h, valid_si_snri=1 + 2 * math.log2(h)) for h in (1, 2, 4, 8)]
    >>> b, hours = extrapolate(rows, 9.0)
    >>> round(b, 6), round(hours, 3)
    (2.0, 16.0)
    """
    import numpy as np

    from_hours = min(from_hours, float(rows[-1]["cpu_hours"]) / 2)
    pts = [
        (float(r["cpu_hours"]), float(r["valid_si_snri"]))
        for r in rows
        if float(r["cpu_hours"]) >= from_hours
    ]
    if len(pts) < 2:
        return float("nan"), float("nan")
    x, y = np.log2([h for h, _ in pts]), np.array([v for _, v in pts])
    b, a = np.polyfit(x, y, 1)
    return float(b), (float(2 ** ((target_db - a) / b)) if b > 0 else math.inf)


def notes(rows, hp_text, test_db=None, target_db=8.0, card=None):
    """The model card's training section (markdown).

    ``card`` holds the run's description: ``recipe_dir``, ``train_script``,
    ``export_script``, ``data`` (what the training mixes) and ``eval`` (the
    validation and test sets), as :func:`main`'s options.
    """
    card = {**CARD_DEFAULTS, **(card or {})}
    hp = yaml.safe_load(re.sub(r"!\S+", "", hp_text))
    last = rows[-1]
    out = [
        "## Training",
        "",
        "![learning curve](learning_curve.png)",
        "",
        "Trained on CPU (a 2-core machine shared with development work), in several",
        "sessions, each resumed from the last checkpoint (a new machine warm-starts from",
        "these weights):",
        "",
        "```bash",
        f"cd {card['recipe_dir']}",
        f"bash {card['train_script']} RUN_FOLDER     # resumable; kill it any time",
        f"bash {card['export_script']} RUN_FOLDER    # test + export the best checkpoint",
        "```",
        "",
        f"SepMamba dim {hp['model_dim']}, {hp['model_blocks']} Mamba block(s) per direction, "
        f"stride {hp.get('model_stride', 2)}, {hp.get('model_output', 'mapping')} output; "
        f"{card['data']}; now batch "
        f"{hp['batch_size']} x {hp['segment_seconds']} s, lr {hp['lr']} "
        f"({hp.get('lr_schedule', 'plateau')}).",
        f"So far: {last['steps']} optimizer steps, {float(last['cpu_hours']):.1f} CPU-hours "
        "(process CPU time of training"
        + (
            "; the first run's are estimated from its wall time)."
            if any(str(r.get("cpu_estimated")) == "1" for r in rows)
            else ")."
        ),
        f"{card['eval']} `learning_curve.csv` and `train_log.txt` hold the full record.",
        "",
    ]
    # runs validated on another set than the history's first runs are fitted on
    # their own epochs: those whose label starts with own_curve
    prefix = card["own_curve"]
    own = [r for r in rows if r["run"].startswith(prefix)] if prefix else rows
    best = max(own, key=lambda r: float(r["valid_si_snri"]))
    gap = float(best["valid_si_snri"]) - test_db if test_db is not None else 0.0
    per_doubling, hours = extrapolate(own, target_db + gap)
    if not math.isfinite(per_doubling):
        how = "The curve has too few epochs on this validation set for a fit yet."
    else:
        how = (
            "A straight line through the curve against log2 of the CPU-hours (epochs after "
            f"the steep start) gains {per_doubling:.2f} dB per doubling of the CPU time."
        )
    needs = f"{target_db:g} dB"
    if test_db is not None:
        how += (
            f" The test speakers score {gap:.2f} dB below the validation speakers (best "
            f"epoch: valid {float(best['valid_si_snri']):.2f}, test {test_db:.2f} dB), so "
            f"{target_db:g} dB on the test speakers needs about "
            f"{target_db + gap:.1f} dB on validation."
        )
        needs = f"{target_db + gap:.1f} dB on validation"
    if math.isfinite(per_doubling):
        if math.isfinite(hours) and hours < 1000:
            how += (
                f" The fit reaches {needs} after about **{hours:,.0f} CPU-hours** of this "
                f"recipe ({max(0.0, hours - float(last['cpu_hours'])):,.0f} more)."
            )
        elif math.isfinite(hours):
            how += (
                f" The fit reaches {needs} only after about {hours:,.0f} CPU-hours of this "
                "recipe: far beyond a CPU budget (a larger model and GPU-scale training, "
                "not more of the same)."
            )
        else:
            how += " The fit does not rise, so it gives no estimate."
    out += [
        f"How far from {target_db:g} dB? {how} A rough guide, not a promise: the curve is "
        "noisy and each run changed the recipe.",
        "",
        "| run | epoch | steps | CPU-hours | lr | valid SI-SNRi (dB) |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['run']} | {r['epoch']} | {r['steps']} | {float(r['cpu_hours']):.2f} | "
        f"{float(r['lr']):.2e} | {float(r['valid_si_snri']):.2f} |"
        for r in rows
    ]
    return "\n".join(out) + "\n"


CARD_DEFAULTS = {  # the LibriMini demo model's
    "name": "sepmamba-librimini-8k",
    "recipe_dir": "recipes/LibriMini/separation",
    "train_script": "demo/train_demo.sh",
    "export_script": "demo/export_demo.sh",
    "data": "dynamic mixing of the bundled LibriMini train speakers at 8 kHz",
    "eval": "Validation: 50 fixed 4 s mixtures of 20 held-out speakers; test: 100 mixtures "
    "of 20 other held-out speakers.",
    "run_label": "",  # the curve's label of this run; empty: "run N" after the history's
    "own_curve": "",  # non-empty: fit only the runs whose label starts with it (their
    #                   validation set differs from the history's first runs')
}


def main(run, out, card=None, target_db=8.0):
    """Write ``learning_curve.{csv,png}`` and ``notes.md`` of ``run`` into ``out``."""
    card = {**CARD_DEFAULTS, **(card or {})}
    run, out = Path(run), Path(out)
    results = out / "test_results.csv"  # the export script evaluates before this
    test_si_snri = read_test_results(results)["si-snr_i"] if results.is_file() else None
    history = []
    if (run / "history.csv").is_file():
        with open(run / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
    rows = history + run_rows(run, history, card["run_label"] or None)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "learning_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "learning_curve.png", card["name"])
    (out / "notes.md").write_text(
        notes(rows, (run / "hyperparams.yaml").read_text(), test_si_snri, target_db, card)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="the training run's output folder")
    parser.add_argument("out", help="where learning_curve.* and notes.md go")
    for key, value in CARD_DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=value)
    parser.add_argument(
        "--target-db", type=float, default=8.0, help="test SI-SNRi the fit is solved for"
    )
    args = vars(parser.parse_args())
    main(args.pop("run"), args.pop("out"), target_db=args.pop("target_db"), card=args)
