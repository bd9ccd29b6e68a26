"""Real-time streaming of a causal SepMamba on one CPU thread.

For each causal model (by default two random-weight SepMambas of the LibriMini
demo layout: ``dim 32``, one block, stride 4, 3 levels, mask output, kernel
16 and kernel 8; timing does not depend on the weights) and each chunk size,
a mixture is fed through :class:`sb_mamba.inference.streaming.StreamingSeparator`
chunk by chunk on one thread. Reported per chunk size:

* compute per chunk: median and 99th percentile, in ms and as a share of the
  chunk's duration (real time needs < 100 %), from the wall clock and from
  the thread's CPU time (which other load on the machine does not inflate);
* real-time factor (compute / audio duration);
* algorithmic latency: the bound ``lookahead + chunk`` and the worst case
  measured on the stream (from a sample's arrival to the end of the chunk
  after which it is output; compute time not included).

Then one long stream (``--minutes``, 10 by default) at one bottleneck frame
per chunk, with the process's RSS sampled every 10 s of audio: it must stay
flat (the states have a fixed size).

Usage::

    python benchmarks/bench_streaming.py                       # both kernels, 10 minutes
    python benchmarks/bench_streaming.py --minutes 0.5 --seconds 10   # a smoke check
    python benchmarks/bench_streaming.py --model path/to/causal-model

Writes ``benchmarks/results/streaming.json`` and ``streaming.png`` (``--out``).

Authors
-------
 * sb_mamba developers
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def demo_layout(kernel_size):
    """A random-weight causal SepMamba of the LibriMini demo layout."""
    import torch

    from sb_mamba.lobes.sepmamba import SepMamba

    torch.manual_seed(0)
    return SepMamba(
        num_spks=2,
        dim=32,
        num_blocks=1,
        kernel_size=kernel_size,
        stride=4,
        num_levels=3,
        causal=True,
        output="mask",
    ).eval()


def time_chunks(stream, mix, chunk, rate, warmup_chunks=20):
    """Feed ``mix`` in chunks; per-chunk wall and CPU times and the latency."""
    stream.reset()
    wall, cpu, worst, emitted = [], [], 0, 0
    for a in range(0, len(mix), chunk):
        x = mix[a : a + chunk]
        t0, c0 = time.perf_counter(), time.thread_time()
        out = stream.feed(x)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        if len(out):  # outputs emitted[..] arrived from sample `emitted` on
            worst = max(worst, a + len(x) - emitted)
            emitted += len(out)
    stream.flush()
    wall, cpu = np.array(wall[warmup_chunks:]), np.array(cpu[warmup_chunks:])
    dur = chunk / rate
    res = {"chunk_samples": chunk, "chunk_ms": 1000 * dur, "n_chunks": len(wall)}
    for name, t in (("wall", wall), ("cpu", cpu)):
        res[f"{name}_median_ms"] = 1000 * float(np.median(t))
        res[f"{name}_p99_ms"] = 1000 * float(np.percentile(t, 99))
        res[f"{name}_median_share"] = float(np.median(t)) / dur
        res[f"{name}_p99_share"] = float(np.percentile(t, 99)) / dur
        res[f"{name}_rtf"] = float(t.sum()) / (len(t) * dur)
    res["latency_bound_ms"] = stream.latency_ms(chunk)
    res["latency_measured_ms"] = 1000 * worst / rate
    return res


def memory_run(stream, minutes, rate, every_s=10.0):
    """A long stream at one bottleneck frame per chunk; RSS every ``every_s``."""
    import torch

    chunk, n = stream.frame, int(minutes * 60 * rate)
    g = torch.Generator().manual_seed(1)
    block = 0.1 * torch.randn(int(every_s * rate), generator=g)  # recycled audio
    stream.reset()
    per_block = -(-len(block) // chunk)
    n_blocks = -(-n // len(block))
    # preallocated: the benchmark's own bookkeeping must not grow the RSS
    times, t_audio, rss = np.zeros(n_blocks * per_block), [0.0] * n_blocks, [0.0] * n_blocks
    start, i = time.perf_counter(), 0
    for b in range(n_blocks):
        for a in range(0, len(block), chunk):
            t0 = time.thread_time()
            stream.feed(block[a : a + chunk])
            times[i] = time.thread_time() - t0
            i += 1
        t_audio[b] = (b + 1) * len(block) / rate
        rss[b] = _rss_mb()
    stream.flush()
    times = times[20:]
    return {
        "minutes": minutes,
        "chunk_samples": chunk,
        "wall_s": time.perf_counter() - start,
        "audio_s": t_audio,
        "rss_mb": rss,
        "rss_growth_mb": rss[-1] - rss[min(1, len(rss) - 1)],
        "cpu_median_ms": 1000 * float(np.median(times)),
        "cpu_p99_ms": 1000 * float(np.percentile(times, 99)),
        "cpu_rtf": float(times.sum()) / (len(times) * chunk / rate),
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results["models"].items():
        chunks = [c["chunk_ms"] for c in r["chunks"]]
        for key, style in (("cpu_median_share", "o-"), ("cpu_p99_share", "s--")):
            ax1.plot(
                chunks,
                [100 * c[key] for c in r["chunks"]],
                style,
                label=f"{name}: {key.split('_')[1]}",
            )
        if r.get("memory"):
            ax2.plot(np.array(r["memory"]["audio_s"]) / 60, r["memory"]["rss_mb"], label=name)
    ax1.axhline(50, color="gray", lw=0.8, ls=":")
    ax1.axhline(25, color="gray", lw=0.8, ls=":")
    ax1.set(
        xscale="log",
        xlabel="chunk (ms)",
        ylabel="compute per chunk (% of chunk)",
        title="one thread, thread CPU time",
    )
    ax1.legend(fontsize=7)
    ax2.set(xlabel="stream (minutes)", ylabel="RSS (MB)", title="memory over the stream")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="a causal model folder (repeatable); default: the demo layout "
        "with kernel 16 and kernel 8, random weights",
    )
    p.add_argument(
        "--chunks", default="16,64,256,1024", help="chunk sizes in samples (comma-separated)"
    )
    p.add_argument(
        "--seconds", type=float, default=30.0, help="audio fed per chunk size for the timings"
    )
    p.add_argument(
        "--minutes", type=float, default=10.0, help="length of the memory stream (0: skip it)"
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "streaming"),
        help="prefix of the .json and .png written",
    )
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from sb_mamba.inference.separator import MambaSeparator
    from sb_mamba.inference.streaming import StreamingSeparator

    models = {}
    if args.model:
        for folder in args.model:
            sep = MambaSeparator.from_hparams(folder, run_opts={"device": "cpu"})
            models[Path(folder).name] = sep.stream()
    else:
        for k in (16, 8):
            models[f"demo layout, kernel {k}"] = StreamingSeparator(demo_layout(k))
    rate = 8000
    mix = 0.1 * torch.randn(int(args.seconds * rate), generator=torch.Generator().manual_seed(0))
    results = {
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
        "torch": torch.__version__,
        "sample_rate": rate,
        "models": {},
    }
    for name, stream in models.items():
        rate = stream.sample_rate
        r = {
            "lookahead_samples": stream.lookahead,
            "frame_samples": stream.frame,
            "lookahead_ms": 1000 * stream.lookahead / rate,
            "chunks": [],
        }
        for chunk in sorted({int(c) for c in args.chunks.split(",")} | {stream.frame}):
            c = time_chunks(stream, mix, chunk, rate)
            r["chunks"].append(c)
            print(
                f"{name}: chunk {chunk} ({c['chunk_ms']:.1f} ms): cpu median "
                f"{c['cpu_median_ms']:.2f} ms ({100 * c['cpu_median_share']:.0f} %), p99 "
                f"{c['cpu_p99_ms']:.2f} ms ({100 * c['cpu_p99_share']:.0f} %); wall median "
                f"{c['wall_median_ms']:.2f} / p99 {c['wall_p99_ms']:.2f} ms; RTF "
                f"{c['cpu_rtf']:.3f}; latency {c['latency_measured_ms']:.1f} ms "
                f"(bound {c['latency_bound_ms']:.1f})",
                flush=True,
            )
        if args.minutes > 0:
            m = memory_run(stream, args.minutes, rate)
            r["memory"] = m
            print(
                f"{name}: {args.minutes:g} min stream in {m['wall_s']:.0f} s: RSS "
                f"{m['rss_mb'][0]:.0f} -> {m['rss_mb'][-1]:.0f} MB (growth after the first "
                f"10 s: {m['rss_growth_mb']:+.1f} MB); cpu median {m['cpu_median_ms']:.2f} "
                f"ms, p99 {m['cpu_p99_ms']:.2f} ms, RTF {m['cpu_rtf']:.3f}",
                flush=True,
            )
        results["models"][name] = r
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"Wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
