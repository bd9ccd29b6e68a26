"""Size, compute, speed and memory of every separator, in one run.

For every model fragment in ``hparams/models/*.yaml`` and for SpeechBrain's
own Conv-TasNet, DPRNN and SepFormer (built from SpeechBrain classes with the
settings of SpeechBrain's WSJ0-2mix recipe YAMLs), it reports:

* parameters;
* MACs per second of audio, counted with :class:`torch.utils.flop_counter.
  FlopCounterMode` (matmuls and convolutions; MACs = FLOPs / 2) **plus**
  what that counter cannot see, counted analytically: the selective scan
  (and, on the fused CPU path, the step-size projection done in its kernel),
  3 MACs per (batch, channel, state, step) (state update ``a*x + b``, input
  term ``delta*B*u``, readout ``C*x``), and the S4 FFT convolutions,
  ``2.5 n log2 n`` real MACs per real FFT of size ``n = 2L`` (three FFTs per
  convolution) plus the spectral product. Element-wise work (activations,
  norms, gates) is not counted, for any model;
* CPU forward time and peak extra memory (peak RSS of a fresh worker process
  minus its RSS before the forward pass) for ``--seconds`` of audio at the
  model's rate, batch 1, ``--threads`` threads;
* the time of one training step: forward, uPIT SI-SNR loss, backward.

Usage::

    python benchmarks/bench_models.py --json models.json
    python benchmarks/bench_models.py --models sepmamba_s sepformer
    python benchmarks/bench_models.py --models sepmamba_s sepmamba_s@int8 sepformer \\
        --train-repeats 0 --json benchmarks/results/models_precision.json

``NAME@int8`` runs a fragment in int8 (:mod:`sb_mamba.inference.precision`);
``--json`` also writes a PNG beside it (time per second of audio).

Authors
-------
 * sb_mamba developers
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAGMENTS = sorted(p.stem for p in (ROOT / "hparams" / "models").glob("*.yaml"))
BASELINES = ["convtasnet", "dprnn", "sepformer"]


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def build_baseline(name, num_spks=2):
    """SpeechBrain's WSJ0-2mix recipe models, as a [B, T] -> [B, T, S] module."""
    import torch
    from speechbrain.lobes.models import conv_tasnet, dual_path

    enc = dual_path.Encoder(kernel_size=16, out_channels=256)
    dec = dual_path.Decoder(in_channels=256, out_channels=1, kernel_size=16, stride=8, bias=False)
    if name == "convtasnet":  # recipes/WSJ0Mix/separation/hparams/convtasnet.yaml
        mask = conv_tasnet.MaskNet(
            N=256,
            B=256,
            H=512,
            P=3,
            X=6,
            R=4,
            C=num_spks,
            norm_type="gLN",
            causal=True,
            mask_nonlinear="relu",
        )
    elif name == "dprnn":  # .../hparams/dprnn.yaml

        def rnn():
            return dual_path.SBRNNBlock(
                num_layers=1,
                input_size=256,
                hidden_channels=256,
                dropout=0,
                bidirectional=True,
            )

        mask = dual_path.Dual_Path_Model(
            num_spks=num_spks,
            in_channels=256,
            out_channels=256,
            num_layers=6,
            K=250,
            intra_model=rnn(),
            inter_model=rnn(),
            norm="ln",
            linear_layer_after_inter_intra=True,
            skip_around_intra=True,
        )
    elif name == "sepformer":  # .../hparams/sepformer.yaml

        def tf():
            return dual_path.SBTransformerBlock(
                num_layers=8,
                d_model=256,
                nhead=8,
                d_ffn=1024,
                dropout=0,
                use_positional_encoding=True,
                norm_before=True,
            )

        mask = dual_path.Dual_Path_Model(
            num_spks=num_spks,
            in_channels=256,
            out_channels=256,
            num_layers=2,
            K=250,
            intra_model=tf(),
            inter_model=tf(),
            norm="ln",
            linear_layer_after_inter_intra=False,
            skip_around_intra=True,
        )
    else:
        raise ValueError(name)

    class MaskingSeparator(torch.nn.Module):
        """Encoder -> MaskNet -> masked decoding, as SpeechBrain's Separation brain."""

        def __init__(self):
            super().__init__()
            self.encoder, self.masknet, self.decoder = enc, mask, dec

        def forward(self, mix):
            mix_w = self.encoder(mix)  # [B, N, L]
            est_mask = self.masknet(mix_w)  # [S, B, N, L]
            sep_h = torch.stack([mix_w] * num_spks) * est_mask
            est = torch.cat(
                [self.decoder(sep_h[i]).unsqueeze(-1) for i in range(num_spks)], -1
            )  # [B, T', S]
            T = mix.shape[1]
            if est.shape[1] < T:
                est = torch.nn.functional.pad(est, (0, 0, 0, T - est.shape[1]))
            return est[:, :T]

    return MaskingSeparator(), 8000


def build(name):
    """Return (module, sample_rate) for a fragment or a baseline name.

    ``NAME@PRECISION`` (e.g. ``sepmamba_s@int8``) builds the fragment in an
    inference precision of :mod:`sb_mamba.inference.precision`.
    """
    name, _, precision = name.partition("@")
    if name in BASELINES:
        if precision not in ("", "fp32"):
            raise ValueError(f"{name}: only fp32 (precisions are sb_mamba's).")
        return build_baseline(name)
    from sb_mamba.inference.precision import apply_precision, check_precision
    from sb_mamba.resources import load_fragment

    hp = load_fragment(name)
    model = hp["separator"].eval()
    apply_precision(model, check_precision(precision or "fp32", "cpu"))
    return model, hp["sample_rate"]


def count_macs(model, mix):
    """MACs of one forward pass (FlopCounterMode + analytic scan / FFT conv)."""
    from torch.utils.flop_counter import FlopCounterMode

    extra = [0.0]
    patches = []
    try:
        import sb_mamba.nnet.fused as fused_mod  # mamba_inner_ref's scan

        orig_scan = fused_mod.selective_scan

        def counted_scan(u, delta, A, *a, **k):
            b, d, L = u.shape
            extra[0] += 3.0 * b * d * L * A.shape[1]
            return orig_scan(u, delta, A, *a, **k)

        fused_mod.selective_scan = counted_scan
        patches.append((fused_mod, "selective_scan", orig_scan))

        # The fused CPU path: its kernel also does dt_proj's product.
        import sb_mamba.nnet.mamba as mamba_mod  # Mamba calls mamba_inner_cpu

        orig_inner = mamba_mod.mamba_inner_cpu

        def counted_inner(xz, conv_w, conv_b, x_proj_w, dt_proj_w, *a, **k):
            b, L = xz.shape[:2]
            d, r = dt_proj_w.shape
            extra[0] += 3.0 * b * d * L * a[1].shape[1] + b * L * r * d
            return orig_inner(xz, conv_w, conv_b, x_proj_w, dt_proj_w, *a, **k)

        mamba_mod.mamba_inner_cpu = counted_inner
        patches.append((mamba_mod, "mamba_inner_cpu", orig_inner))
    except ImportError:
        pass
    try:
        import sb_mamba.nnet.s4 as s4_mod

        orig_fft = s4_mod.fft_conv

        def counted_fft(u, k, *a, **kw):
            n = 2 * u.shape[-1]
            lanes = u.numel() / u.shape[-1]
            extra[0] += lanes * (3 * 2.5 * n * math.log2(n) / 2 + 2 * n)
            return orig_fft(u, k, *a, **kw)

        s4_mod.fft_conv = counted_fft
        patches.append((s4_mod, "fft_conv", orig_fft))
    except ImportError:
        pass
    try:
        counter = FlopCounterMode(display=False)
        # grad mode on: SpeechBrain's attention then takes the counted bmm path
        with counter:
            model(mix)
    finally:
        for mod, attr, orig in patches:
            setattr(mod, attr, orig)
    return counter.get_total_flops() / 2 + extra[0]


def worker(args):
    """Measure one model; print a JSON line."""
    import torch
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, sr = build(args.model)
    params = sum(p.numel() for p in model.parameters())
    T = int(args.seconds * sr)
    mix = torch.randn(1, T) * 0.1

    # Forward first, so that the peak RSS is the forward pass's own.
    model.eval()
    with torch.no_grad():
        model(mix[:, : sr // 4])  # warm-up (kernel loading, allocator)
    base = _rss_mb()
    times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            est = model(mix)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    assert est.shape == (1, T, 2), est.shape
    # one second of audio; an int8 model counts as its fp32 layout (packed
    # products are invisible to the counter)
    counted = build(args.model.partition("@")[0])[0] if "@" in args.model else model
    macs = count_macs(counted, torch.randn(1, sr) * 0.1)

    row = {
        "model": args.model,
        "params_M": params / 1e6,
        "GMACs_per_s": macs / 1e9,
        "sample_rate": sr,
        "fwd_s": statistics.median(times),
        "fwd_best_s": min(times),
        "fwd_peak_MB": max(peak, 0.0),
        "train_step_s": None,
    }
    if args.train_repeats == 0 or "@" in args.model:  # int8 is for inference
        print(json.dumps(row))
        return
    model.train()
    targets = torch.randn(1, T, 2) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    steps = []
    for _ in range(args.train_repeats):
        t0 = time.perf_counter()
        loss = get_si_snr_with_pitwrapper(targets, model(targets.sum(-1))).mean()
        opt.zero_grad()
        loss.backward()
        steps.append(time.perf_counter() - t0)
        opt.step()
    row["train_step_s"] = statistics.median(steps)
    print(json.dumps(row))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=FRAGMENTS + BASELINES)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-repeats", type=int, default=2)
    p.add_argument(
        "--no-train",
        nargs="*",
        default=[],
        help="models whose training step is not timed (e.g. too much memory on CPU)",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    for name in args.models:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--model",
            name,
            "--seconds",
            str(args.seconds),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
            "--train-repeats",
            str(0 if name in args.no_train else args.train_repeats),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            row = {"model": name, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {row}", file=sys.stderr, flush=True)

    print(
        f"\n{args.seconds:g} s of audio at the model's rate, batch 1, {args.threads} CPU "
        "threads, fp32\n"
    )
    print("| model | params (M) | GMAC/s | fwd (s) | fwd peak (MB) | train step (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} | | | | |")
            continue
        rate = "" if r["sample_rate"] == 8000 else f" ({r['sample_rate'] // 1000} kHz)"
        step = "not run" if r["train_step_s"] is None else f"{r['train_step_s']:.2f}"
        print(
            f"| {r['model']}{rate} | {r['params_M']:.2f} | {r['GMACs_per_s']:.2f} | "
            f"{r['fwd_s']:.2f} | {r['fwd_peak_MB']:.0f} | {step} |"
        )
    by = {r["model"]: r for r in rows if "error" not in r}
    ratios = {}
    if "sepformer" in by:
        f = by["sepformer"]
        print("\nSepMamba-S forward relative to SepFormer (best of the repeats):")
        for name, target in (("sepmamba_s", 0.12), ("sepmamba_s@int8", 0.08)):
            if name in by:
                ratios[name] = by[name]["fwd_best_s"] / f["fwd_best_s"]
                verdict = "PASS" if ratios[name] <= target else "FAIL"
                print(f"- {name}: {ratios[name]:.3f}x (target <= {target}) {verdict}")
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": "python benchmarks/bench_models.py " + " ".join(sys.argv[1:]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(),
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**meta, "config": vars(args), "rows": rows, "ratios": ratios}, fh, indent=1)
        plot(rows, args, Path(args.json).with_suffix(".png"), meta)


def plot(rows, args, png, meta):
    """Bar chart: forward seconds per second of audio, one bar per model and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    per_s = [r["fwd_best_s"] / args.seconds for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows)), 3.6))
    bars = ax.bar([r["model"] for r in rows], per_s, color="tab:blue")
    for b, v in zip(bars, per_s):
        ax.annotate(f"{v:.3f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylabel("forward s per s of audio")
    ax.set_title(
        f"{args.seconds:g} s at 8 kHz, batch 1, {args.threads} threads, best of "
        f"{args.repeats} ({meta['date'][:10]})",
        fontsize=9,
    )
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
