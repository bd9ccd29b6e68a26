"""Throughput of reverberant dynamic mixing vs. SepMamba-S training, on CPU.

Measured (8 kHz, 2 speakers, ``--seconds`` crops, noise at -6..3 dB, WHAMR!
room and RT60 ranges, anechoic targets; every figure is mixtures per second
through a ``torch.utils.data.DataLoader`` with batch size 1, in steady state,
i.e. timed from the first batch to the last so that worker start-up is
excluded):

* **simulate per mixture**: :class:`~sb_mamba.dataio.mixing.
  ReverbDynamicMixing` without a bank (a room drawn and simulated, with its
  RT60 calibration, for every mixture);
* **from a bank**: the same with a precomputed RIR bank (FFT convolution
  only); the bank's own build rate (rooms/s, ``make_rir_bank``, one mic) is reported
  too, as it is the one-off cost;
* **dry**: plain dynamic mixing, for reference;
* **SepMamba-S training**: one optimizer step (forward, uPIT SI-SNR,
  backward, AdamW) of ``hparams/models/sepmamba_s.yaml`` on a batch of one
  ``--train-seconds`` mixture (default: the same 4 s) with ``--threads``
  threads, median of 3 after a warm-up; mixtures/s = 1 / step time. A
  shorter ``--train-seconds`` is a quicker proxy, extrapolated linearly to
  ``--seconds`` (Mamba's cost is linear in length; on this machine the 1-s
  proxy underestimated the 4-s step by about 30 %).

Speech: the bundled LibriMini train speakers (8 kHz); noise:
``../shared/data/noise`` when present (resampled once), else the bundled
``tests/samples/noise_8k``. The machine's load average is printed with the
table: figures taken while another process keeps a core busy are marked.

Usage::

    python benchmarks/bench_reverb.py [--json benchmarks/results/bench_reverb.json]
    python benchmarks/bench_reverb.py --bank-rooms 100 --bank-items 400

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "recipes" / "LibriMini" / "data" / "train"
SHARED_NOISE = ROOT.parent / "shared" / "data" / "noise"
NOISE = SHARED_NOISE if SHARED_NOISE.is_dir() else ROOT / "tests" / "samples" / "noise_8k"


def loader_rate(dataset, n, workers):
    """Steady-state mixtures/s of a DataLoader over the first ``n`` items."""
    import speechbrain as sb
    import torch

    subset = torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=1, num_workers=workers, collate_fn=sb.dataio.batch.PaddedBatch
    )
    t0 = None
    for i, _ in enumerate(loader):
        if i == 0:
            t0 = time.perf_counter()
    return (n - 1) / (time.perf_counter() - t0)


def train_step_seconds(seconds, threads, repeats=3):
    """Median time of one SepMamba-S training step on one mixture of ``seconds``."""
    import torch

    from sb_mamba.metrics import pit_si_snr_loss
    from sb_mamba.resources import load_fragment

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_fragment("sepmamba_s")["separator"]
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4)
    targets = torch.randn(1, int(seconds * 8000), 2) * 0.1
    times = []
    for i in range(repeats + 1):  # the first step warms up
        t0 = time.perf_counter()
        loss = pit_si_snr_loss(targets, model(targets.sum(-1))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="mixture length (s)")
    p.add_argument("--bank-rooms", type=int, default=24, help="rooms in the benchmark bank")
    p.add_argument("--bank-folder", help="bank to (re)use (default: a temporary folder)")
    p.add_argument("--bank-items", type=int, default=200, help="mixtures timed from the bank")
    p.add_argument("--sim-items", type=int, default=12, help="mixtures timed when simulating")
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="DataLoader workers to time (0: in the main process)",
    )
    p.add_argument("--train-seconds", type=float, default=4.0, help="SepMamba-S step crop (s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the train step")
    p.add_argument(
        "--json",
        default=str(Path(__file__).parent / "results" / "bench_reverb.json"),
        help="write the results here",
    )
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sb_mamba.dataio.mixing import ReverbDynamicMixing
    from sb_mamba.dataio.rir_bank import make_rir_bank

    load0 = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="bench_reverb_")
    bank = Path(args.bank_folder or Path(tmp) / "bank")
    t0 = time.perf_counter()
    make_rir_bank(bank, args.bank_rooms, 8000, seed=0, num_workers=2, num_mics=1)
    bank_s = time.perf_counter() - t0
    with open(bank / "rir_bank.csv", newline="") as f:
        rooms = {r["room_id"]: r for r in csv.DictReader(f)}.values()
    err = [float(r["rt60_measured"]) / float(r["rt60_target"]) - 1 for r in rooms]
    rt60 = {
        "rooms": len(err),
        "median_abs_error": statistics.median(map(abs, err)),
        "max_abs_error": max(map(abs, err)),
        "within_20_percent": sum(abs(e) <= 0.2 for e in err) / len(err),
    }
    common = dict(
        sample_rate=8000,
        num_spks=2,
        epoch_size=max(args.bank_items, args.sim_items),
        segment_seconds=args.seconds,
        noise_folder=NOISE,
        snr_db_range=(-6, 3),
        cache_folder=Path(tmp) / "cache",
        seed=1,
    )
    sets = {
        "dry (no reverb)": (
            ReverbDynamicMixing(SPEECH, use_reverb=False, **common),
            args.bank_items,
        ),
        "reverb, from a RIR bank": (
            ReverbDynamicMixing(SPEECH, rir_bank=bank, **common),
            args.bank_items,
        ),
        "reverb, simulate per mixture": (ReverbDynamicMixing(SPEECH, **common), args.sim_items),
    }
    rows = []
    for name, (ds, n) in sets.items():
        for w in args.workers:
            rate = loader_rate(ds, n, w)
            rows.append({"data": name, "workers": w, "items": n, "mixtures_per_s": rate})
            print(f"  {name}, {w} workers: {rate:.2f} mixtures/s", file=sys.stderr, flush=True)
    step = train_step_seconds(args.train_seconds, args.threads)
    step4 = step * args.seconds / args.train_seconds
    train = {
        "train_seconds": args.train_seconds,
        "threads": args.threads,
        "step_s": step,
        "step_s_at_seconds": step4,
        "mixtures_per_s": 1 / step4,
    }
    load1 = os.getloadavg()[0]
    busy = f"load average {load0:.2f} at start, {load1:.2f} at end on {os.cpu_count()} cores"
    print(
        f"\n{args.seconds:g} s mixtures at 8 kHz, 2 speakers + noise, WHAMR! rooms; "
        f"{busy}{' (one core busy with another job)' if load0 >= 0.8 else ''}.\n"
    )
    print("| data | DataLoader workers | mixtures/s |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['workers']} | {r['mixtures_per_s']:.2f} |")
    print(
        f"| RIR bank build (make_rir_bank, 2 processes) | - | "
        f"{args.bank_rooms / bank_s:.2f} rooms/s |"
    )
    print(
        f"| SepMamba-S training ({args.threads} thread{'s' * (args.threads > 1)}; "
        f"{args.train_seconds:g} s step {step:.2f} s -> {args.seconds:g} s step {step4:.2f} s) "
        f"| - | {1 / step4:.3f} |"
    )
    print(
        f"\nRT60 of the bank's {rt60['rooms']} rooms (T30, measure_rt60) vs. target: "
        f"median |error| {100 * rt60['median_abs_error']:.1f} %, max "
        f"{100 * rt60['max_abs_error']:.1f} %, {100 * rt60['within_20_percent']:.0f} % "
        "within +-20 %."
    )
    best = max(r["mixtures_per_s"] for r in rows if r["data"] == "reverb, from a RIR bank")
    print(
        f"\nMixing from the bank supplies {best * step4:.0f}x what SepMamba-S training "
        "consumes on this CPU."
    )
    with open(args.json, "w") as f:
        json.dump(
            {
                "config": vars(args),
                "load_average": [load0, load1],
                "bank_rooms_per_s": args.bank_rooms / bank_s,
                "rt60": rt60,
                "rows": rows,
                "train": train,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
