"""Benchmark of the selective-scan backends against the naive autograd loop.

For every sequence length, it times the forward pass (no grad) and the
forward+backward pass of

* ``naive``: :func:`sb_mamba.nnet.scan_torch.selective_scan_ref`, a per-step
  PyTorch loop differentiated by autograd,
* every available backend of :func:`sb_mamba.nnet.scan.selective_scan`
  (``torch``, ``cpu_kernel``; ``cuda`` on a GPU with mamba-ssm),

and the peak extra memory of each (peak RSS of a fresh worker process minus
its RSS once the inputs exist; CUDA: ``max_memory_allocated``). Each
measurement runs in its own process so that peaks do not mix.

Usage::

    python benchmarks/bench_scan.py                 # B=1, dim=128, N=16, 2 threads
    python benchmarks/bench_scan.py --lengths 1000 4000 --json scan.json

It prints a markdown table and the two targets of the foundation issue at
L=4000: forward+backward >= 100x faster than naive, forward <= 0.3x naive.

Authors
-------
 * sb_mamba developers
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(args):
    """Run one measurement and print it as JSON."""
    import torch

    from sb_mamba.nnet.scan import resolve_backend, selective_scan
    from sb_mamba.nnet.scan_torch import selective_scan_ref

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    b, d, n, L = args.batch, args.dim, args.state, args.length
    u = torch.randn(b, d, L, device=dev)
    delta = torch.randn(b, d, L, device=dev)
    A = -torch.rand(d, n, device=dev) * 4 - 0.5
    B = torch.randn(b, n, L, device=dev)
    C = torch.randn(b, n, L, device=dev)
    D, z, bias = (
        torch.randn(d, device=dev),
        torch.randn(b, d, L, device=dev),
        torch.randn(d, device=dev),
    )
    grad = args.mode == "fwd+bwd"
    leaves = [t.requires_grad_(grad) for t in (u, delta, A, B, C, D, z, bias)]

    if args.impl == "naive":

        def fn():
            return selective_scan_ref(*leaves, delta_softplus=True)

        used = "naive"
    else:

        def fn():
            return selective_scan(*leaves, delta_softplus=True, backend=args.impl)

        used = resolve_backend(args.impl, dev)

    def run():
        if grad:
            fn().sum().backward()
            for t in leaves:
                t.grad = None
        else:
            with torch.no_grad():
                fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (and kernel load)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(
        json.dumps({"impl": used, "ms": 1000 * statistics.median(times), "peak_mb": max(peak, 0.0)})
    )


def measure(args, impl, length, mode, repeats):
    """Spawn a worker for one (impl, length, mode) and parse its result."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--impl",
        impl,
        "--length",
        str(length),
        "--mode",
        mode,
        "--repeats",
        str(repeats),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--dim",
        str(args.dim),
        "--state",
        str(args.state),
        "--device",
        args.device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"impl": impl, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--impls", nargs="+", default=["naive", "torch", "cpu_kernel", "cuda"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--naive-bwd-max",
        type=int,
        default=4000,
        help="longest L for the naive forward+backward (it takes minutes beyond)",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    impls = [i for i in args.impls if not (i == "cuda" and args.device == "cpu")]
    rows = []
    for L in args.lengths:
        for impl in impls:
            for mode in ("fwd", "fwd+bwd"):
                # the naive backward is minutes long: time it once
                reps = 1 if (impl == "naive" and mode == "fwd+bwd") else args.repeats
                if impl == "naive" and mode == "fwd+bwd" and L > args.naive_bwd_max:
                    r = {
                        "impl": impl,
                        "error": f"skipped (L > --naive-bwd-max={args.naive_bwd_max})",
                    }
                else:
                    r = measure(args, impl, L, mode, reps)
                r.update(requested=impl, L=L, mode=mode)
                rows.append(r)
                print(f"  L={L:6d} {impl:10s} {mode:8s} -> {r}", file=sys.stderr, flush=True)

    print(
        f"\nselective scan, B={args.batch}, dim={args.dim}, N={args.state}, "
        f"{args.threads} threads, {args.device}, fp32, z + delta_bias + softplus on\n"
    )
    print(
        "| L | backend | fwd ms | fwd peak MB | fwd+bwd ms | fwd+bwd peak MB | fwd+bwd speed-up vs naive |"
    )
    print("|---|---|---|---|---|---|---|")
    table = {}
    for r in rows:
        table[(r["L"], r["requested"], r["mode"])] = r
    summary = {}
    for L in args.lengths:
        naive = table.get((L, "naive", "fwd+bwd"), {}).get("ms")

        for impl in impls:
            f, fb = table[(L, impl, "fwd")], table[(L, impl, "fwd+bwd")]
            if "error" in f:
                print(f"| {L} | {impl} | n/a: {f['error']} | | | | |")
                continue
            if "error" in fb:
                print(f"| {L} | {impl} | {f['ms']:.1f} | {f['peak_mb']:.0f} | {fb['error']} | | |")
                continue
            name = impl if f["impl"] == impl or impl == "naive" else f"{impl} (ran {f['impl']})"
            speed = (
                f"{naive / fb['ms']:.0f}x"
                if naive and impl != "naive"
                else "1x"
                if impl == "naive"
                else ""
            )
            print(
                f"| {L} | {name} | {f['ms']:.1f} | {f['peak_mb']:.0f} | {fb['ms']:.1f} | "
                f"{fb['peak_mb']:.0f} | {speed} |"
            )
    if 4000 in args.lengths and "naive" in impls:
        nf, nfb = table[(4000, "naive", "fwd")]["ms"], table[(4000, "naive", "fwd+bwd")]["ms"]
        best = min(
            (i for i in impls if i != "naive" and "error" not in table[(4000, i, "fwd+bwd")]),
            key=lambda i: table[(4000, i, "fwd+bwd")]["ms"],
        )
        bf, bfb = table[(4000, best, "fwd")]["ms"], table[(4000, best, "fwd+bwd")]["ms"]
        summary = {
            "best_backend": best,
            "fwd_bwd_speedup": nfb / bfb,
            "fwd_ratio": bf / nf,
        }
        ok1, ok2 = nfb / bfb >= 100, bf / nf <= 0.3
        print(f"\nTargets at L=4000 (best backend: {best}):")
        print(
            f"- forward+backward speed-up vs naive autograd loop: {nfb / bfb:.0f}x "
            f"(target >= 100x) {'PASS' if ok1 else 'FAIL'}"
        )
        print(
            f"- forward time / naive no-grad loop: {bf / nf:.3f} (target <= 0.3) "
            f"{'PASS' if ok2 else 'FAIL'}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "rows": rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
