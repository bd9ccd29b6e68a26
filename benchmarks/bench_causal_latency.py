#!/usr/bin/env python3
"""Quality of causal SepMambas of two look-aheads for the same CPU budget.

Reads the learning curves of training runs (``train_log.txt``: validation
SI-SNRi and CPU minutes per epoch, as the General and LibriMini recipes write
them) of causal models that differ in their kernel, hence in their look-ahead,
and compares them at the CPU budget they all reached: each run's validation
SI-SNRi interpolated at that many CPU-hours. The look-ahead is the model's own
(``SepMamba.lookahead``); the latency of a stream fed one bottleneck frame
per chunk is look-ahead + chunk.

Usage (from the repository root)::

    python benchmarks/bench_causal_latency.py \\
        --run "kernel 8=/work/general_run/causal-k8" \\
        --run "kernel 16=/work/general_run/causal-k16" \\
        --out benchmarks/results/causal_latency

Writes ``<out>.json`` (every epoch of every run, the comparison point),
``<out>.md`` (a table) and ``<out>.png`` (valid SI-SNRi against CPU-hours,
one curve per look-ahead).

Authors
-------
 * sb_mamba developers
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_info(folder):
    """Look-ahead (samples, ms) and curve rows of one causal run."""
    from sb_mamba.lobes.sepmamba import causal_lookahead
    from sb_mamba.training.notes import run_rows

    folder = Path(folder)
    hp = yaml.safe_load(re.sub(r"!\S+", "", (folder / "hyperparams.yaml").read_text()))
    if not hp.get("model_causal"):
        raise SystemExit(f"{folder} is not a causal run (model_causal is not True).")
    kernel, stride, rate = hp["model_kernel_size"], hp["model_stride"], hp["sample_rate"]
    lookahead = causal_lookahead(kernel, stride, 3)
    rows = run_rows(folder, [], label=str(folder.name))
    return {
        "folder": str(folder),
        "kernel_size": kernel,
        "stride": stride,
        "lookahead_samples": lookahead,
        "lookahead_ms": 1000 * lookahead / rate,
        "frame_ms": 1000 * stride**3 / rate,
        "epochs": [
            {"epoch": r["epoch"], "cpu_hours": r["cpu_hours"], "valid_si_snri": r["valid_si_snri"]}
            for r in rows
        ],
    }


def at_budget(run, hours):
    """Validation SI-SNRi at ``hours`` CPU-hours (linear between epochs)."""
    x = [0.0] + [e["cpu_hours"] for e in run["epochs"]]
    y = [None] + [e["valid_si_snri"] for e in run["epochs"]]
    if hours < x[1]:
        return None
    return float(np.interp(hours, x[1:], y[1:]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "causal_latency"))
    args = p.parse_args(argv)
    runs = {}
    for spec in args.run:
        label, _, folder = spec.partition("=")
        runs[label] = run_info(folder)
        if not runs[label]["epochs"]:
            raise SystemExit(f"{folder} has no finished epoch yet.")
    budget = min(r["epochs"][-1]["cpu_hours"] for r in runs.values())
    for r in runs.values():
        r["valid_si_snri_at_budget"] = at_budget(r, budget)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"budget_cpu_hours": budget, "runs": runs}, indent=1) + "\n"
    )
    lines = [
        f"Valid SI-SNRi (dB) at {budget:.3f} CPU-hours, the budget every run reached:",
        "",
        "| model | look-ahead | latency at one-frame chunks | valid SI-SNRi at the budget |"
        " epochs | last epoch's valid SI-SNRi |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        last = r["epochs"][-1]
        lines.append(
            f"| {label} | {r['lookahead_ms']:.1f} ms ({r['lookahead_samples']} samples) "
            f"| {r['lookahead_ms'] + r['frame_ms']:.1f} ms | {r['valid_si_snri_at_budget']:.2f} "
            f"| {last['epoch']} ({last['cpu_hours']:.3f} CPU-h) | {last['valid_si_snri']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in runs.items():
        xs = [e["cpu_hours"] for e in r["epochs"]]
        ys = [e["valid_si_snri"] for e in r["epochs"]]
        ax.plot(xs, ys, marker="o", label=f"{label}: look-ahead {r['lookahead_ms']:.1f} ms")
    ax.axvline(budget, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("CPU-hours (process CPU time of training)")
    ax.set_ylabel("valid SI-SNRi (dB), held-out speakers")
    ax.set_title("Causal SepMamba: look-ahead against quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
