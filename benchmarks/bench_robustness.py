"""Robustness of model folders on fixed test sets of unseen speakers, rooms and noise.

The test sets are those of the General recipe's data preparation
(:func:`sb_mamba.dataio.general.prepare_general`, conditions
:data:`sb_mamba.dataio.general.CONDITIONS`), built from speakers, noise
recordings and rooms that no training of the recipe uses (100 mixtures of 4 s
each, 8 kHz):

* **clean**: two unseen LibriSpeech readers (LibriMini's test speakers), dry,
  relative levels within +-5 dB (the lab case);
* **voices**: two unseen speechocean762 speakers (children and non-native
  adults), dry;
* **reverb**: two unseen speakers of either corpus in a held-out room
  (measured RIRs of held-out positions, or simulated rooms of another seed);
  the targets are the speakers' reverberant images;
* **noisy**: two unseen speakers with a held-out noise recording at -6 to
  3 dB SNR (WHAM!'s range);
* **single**: one unseen talker alone. Scored by the level of the louder
  output over the quieter one (dB; the quieter output should be silence) and
  the louder output's SI-SNR against the talker.

Two-talker conditions are scored by SI-SNRi (dB, best permutation). The
benchmark writes ``<out>.json``, ``<out>.md`` (a table) and ``<out>.png`` (a
bar per model and condition), so two models compare at a glance.

Usage (from the repository root)::

    python benchmarks/bench_robustness.py --model shipped=pretrained/sepmamba-8k \\
        --model demo=pretrained/sepmamba-librimini-8k --out benchmarks/results/robustness

``--model int8=pretrained/sepmamba-8k@int8`` scores a folder in another
inference precision (:mod:`sb_mamba.inference.precision`).

``--data`` is the shared data folder (default ``../shared/data``); ``--prep``
the folder of the prepared test sets (default ``results/robustness_data``;
a General run's ``save/`` folder is reused as it is).

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERAL = ROOT / "recipes" / "General"
TWO_TALKER = ("clean", "voices", "reverb", "noisy")


def score_folder(model, csv_file, single=False, limit=None):
    """Per-mixture scores of a model on one prepared test set.

    Returns a list of dicts: ``si_snri`` (two talkers), or ``ratio_db`` and
    ``louder_si_snr`` (single talker).
    """
    import torch

    from sb_mamba.audio import read_audio
    from sb_mamba.metrics import output_level_ratio, pit_metric, si_snr

    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    out = []
    for row in rows:
        mix = read_audio(row["mix_wav"], model.sample_rate)
        targets = torch.stack(
            [read_audio(row[f"s{k + 1}_wav"], model.sample_rate) for k in range(model.num_spks)], -1
        )[None]
        est = model.separate_batch(mix[None]).cpu()  # [1, T, S]
        if single:
            louder = est[0].pow(2).sum(0).argmax()
            out.append(
                {
                    "id": row["ID"],
                    "ratio_db": float(output_level_ratio(est)[0]),
                    "louder_si_snr": float(si_snr(est[0, :, louder], targets[0, :, 0])),
                }
            )
            continue
        base = pit_metric(targets, mix[None, :, None].expand_as(targets))[0]
        out.append({"id": row["ID"], "si_snri": float(pit_metric(targets, est)[0] - base)})
    return out


def summarize(scores, single):
    keys = ("ratio_db", "louder_si_snr") if single else ("si_snri",)
    return {
        f"{k}_{stat}": round(fn([s[k] for s in scores]), 3)
        for k in keys
        for stat, fn in (("mean", statistics.mean), ("median", statistics.median))
    } | {"n": len(scores)}


def markdown(results, conditions):
    head = [c for c in conditions if c in TWO_TALKER]
    cols = [f"{c} SI-SNRi" for c in head] + (
        ["single: quieter output below louder (median)", "single: louder output SI-SNR"]
        if "single" in conditions
        else []
    )
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in results.items():
        cells = [f"{res[c]['si_snri_mean']:.2f}" for c in head]
        if "single" in conditions:
            s = res["single"]
            cells += [f"{s['ratio_db_median']:.1f} dB", f"{s['louder_si_snr_median']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results, conditions, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    head = [c for c in conditions if c in TWO_TALKER]
    panels = [("SI-SNRi (dB), two talkers", head, "si_snri_mean")]
    if "single" in conditions:
        panels.append(
            (
                "single talker: quieter output below louder (dB, median)",
                ["single"],
                "ratio_db_median",
            )
        )
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4 + 2.2 * len(head), 4),
        gridspec_kw={"width_ratios": [len(p[1]) for p in panels]},
        squeeze=False,
    )
    width = 0.8 / max(len(results), 1)
    for ax, (title, conds, key) in zip(axes[0], panels):
        x = np.arange(len(conds))
        for i, (name, res) in enumerate(results.items()):
            vals = [res[c][key] for c in conds]
            bars = ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(x, conds)
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=FOLDER (or FOLDER) of a model folder, FOLDER@PRECISION to run it in "
        "another precision (e.g. @int8); repeat to compare",
    )
    parser.add_argument(
        "--data",
        default=str(ROOT.parent / "shared" / "data"),
        help="the shared data folder (speech-l2/, noise/, rir/)",
    )
    parser.add_argument(
        "--prep",
        default=str(ROOT / "results" / "robustness_data"),
        help="folder of the prepared test sets (made if needed)",
    )
    parser.add_argument("--conditions", nargs="+", default=None, help="default: all")
    parser.add_argument("--limit", type=int, default=None, help="first N mixtures per set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "robustness"),
        help="writes OUT.json, OUT.md, OUT.png",
    )
    args = parser.parse_args(argv)

    import torch

    from sb_mamba.dataio.general import CONDITIONS, prepare_general
    from sb_mamba.inference import MambaSeparator

    torch.set_num_threads(args.threads)
    conditions = args.conditions or list(CONDITIONS)
    prepare_general(
        args.data,
        args.prep,
        librimini_folder=ROOT / "recipes" / "LibriMini" / "data",
        splits=GENERAL / "meta" / "splits.json",
    )
    results, start = {}, time.time()
    for spec in args.model:
        name, _, folder = spec.rpartition("=")
        folder, _, precision = folder.partition("@")
        name = name or Path(folder).name + (f"@{precision}" if precision else "")
        precision = precision or "fp32"
        model = MambaSeparator.from_hparams(
            source=folder, run_opts={"device": "cpu", "precision": precision}
        )
        results[name] = {"folder": folder, "precision": precision}
        for cond in conditions:
            scores = score_folder(
                model,
                Path(args.prep) / f"test_{cond}.csv",
                single=cond == "single",
                limit=args.limit,
            )
            results[name][cond] = {**summarize(scores, cond == "single"), "scores": scores}
            print(f"{name:>24} {cond:>7}: {summarize(scores, cond == 'single')}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": "python benchmarks/bench_robustness.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads,
        "seconds": round(time.time() - start, 1),
        "conditions": conditions,
    }
    out.with_suffix(".json").write_text(json.dumps({**meta, "models": results}, indent=1))
    table = markdown(results, conditions)
    out.with_suffix(".md").write_text(f"<!-- {meta['command']} ({meta['date']}) -->\n" + table)
    plot(results, conditions, out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
