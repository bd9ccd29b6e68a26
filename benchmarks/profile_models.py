"""Where a separator's CPU time goes: a per-operator table from torch.profiler.

For each model (a fragment of ``hparams/models``, ``NAME@int8`` in int8, or a
model folder), one forward pass of ``--seconds`` of audio, batch 1, is
profiled on each thread count. The fused C++ kernels of the Mamba mixers
(``kernel::mamba_scan_fwd``: step sizes + selective scan + skip + gate;
``kernel::conv_silu_fwd``: depthwise convolution + SiLU) are called outside
ATen, so they are wrapped in ``record_function`` to appear in the table.
Writes ``<out>.md`` (the tables, with date, load and command) and
``<out>.json`` (the rows); ``--png`` also a stacked bar per model and
thread count (share of time per operator group).

Usage (from the repository root)::

    python benchmarks/profile_models.py --models sepmamba_s spmamba \\
        pretrained/sepmamba-8k --threads 1 2 --out benchmarks/results/profile

Authors
-------
 * sb_mamba developers
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# operator groups of the summary (first match wins)
GROUPS = [
    ("projections (matmul)", ("aten::mm", "aten::addmm", "aten::bmm", "quantized::linear")),
    ("selective scan kernel", ("kernel::mamba_scan",)),
    ("depthwise conv + SiLU kernel", ("kernel::conv_silu",)),
    ("convolutions", ("convolution", "conv2d", "conv1d", "conv_transpose")),
    ("attention", ("attention",)),
    ("norms", ("norm", "var_mean")),
    ("copies, layout", ("copy_", "cat", "contiguous", "clone", "flip", "pad")),
]


def _wrap_kernels():
    """Make the fused kernels' calls visible to the profiler."""
    from torch.profiler import record_function

    import sb_mamba.nnet.fused as fused

    kernels = fused._kernels()

    class Recorded:
        def __getattr__(self, name):
            fn = getattr(kernels, name)

            def call(*a, **k):
                with record_function(f"kernel::{name}"):
                    return fn(*a, **k)

            return call

    fused._kernels = Recorded


def _build(spec):
    """(module, sample_rate) of a fragment name, NAME@PRECISION or a model folder."""
    folder, _, precision = spec.partition("@")
    if Path(folder).is_dir():
        from sb_mamba.inference import MambaSeparator

        sep = MambaSeparator.from_hparams(
            source=folder, run_opts={"device": "cpu", "precision": precision or "fp32"}
        )
        return sep.mods.separator.eval(), sep.sample_rate
    from bench_models import build

    return build(spec)


def group_of(name):
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def profile_one(spec, threads, seconds):
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    model, sr = _build(spec)
    mix = torch.randn(1, int(seconds * sr)) * 0.1
    with torch.no_grad():
        model(mix[:, :sr])  # warm-up
        t0 = time.perf_counter()
        model(mix)
        wall = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(mix)
    ops = [
        {"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    ]
    ops.sort(key=lambda r: -r["self_s"])
    total = sum(r["self_s"] for r in ops)
    groups = {}
    for r in ops:
        groups[group_of(r["op"])] = groups.get(group_of(r["op"]), 0.0) + r["self_s"]
    return {
        "model": spec,
        "threads": threads,
        "seconds": seconds,
        "forward_s": wall,
        "profiled_s": total,
        "groups": {g: v / total for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "ops": ops[:15],
    }


def markdown(rows, meta):
    lines = [f"<!-- {meta['command']} ({meta['date']}, load {meta['load_average']}) -->", ""]
    for r in rows:
        lines += [
            f"### {r['model']}, {r['threads']} thread(s): forward {r['forward_s']:.2f} s "
            f"for {r['seconds']:g} s of audio",
            "",
            "| share | operator group |",
            "|---|---|",
        ]
        lines += [f"| {100 * v:.1f} % | {g} |" for g, v in r["groups"].items()]
        lines += ["", "| operator | self CPU (s) | calls |", "|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['self_s']:.3f} | {o['calls']} |" for o in r["ops"][:10]]
        lines.append("")
    return "\n".join(lines)


def plot(rows, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g, _ in GROUPS] + ["other"]
    labels = [f"{Path(r['model']).name}\n{r['threads']} thr" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows)), 4))
    bottom = [0.0] * len(rows)
    for g in groups:
        vals = [100 * r["groups"].get(g, 0.0) for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=g)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("% of forward CPU time")
    plt.setp(ax.get_xticklabels(), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["sepmamba_s", "spmamba"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profile"))
    p.add_argument("--png", action="store_true", help="also write <out>.png")
    args = p.parse_args(argv)
    _wrap_kernels()
    rows = []
    for spec in args.models:
        for threads in args.threads:
            rows.append(profile_one(spec, threads, args.seconds))
            print(
                f"{spec} {threads} thr: {rows[-1]['forward_s']:.2f} s, "
                + ", ".join(f"{g} {100 * v:.0f}%" for g, v in rows[-1]["groups"].items()),
                flush=True,
            )
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": "python benchmarks/profile_models.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    if args.png:
        plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
