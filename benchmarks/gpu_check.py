#!/usr/bin/env python3
"""GPU check of sb_mamba's ``cuda`` path: parity, bf16 training, speed, memory.

For a machine with an NVIDIA GPU and ``pip install -e '.[cuda]'`` (mamba-ssm and
causal-conv1d built for its torch/CUDA; see README, "Installing the CUDA
kernels"). Installs nothing itself. For each model fragment of
``hparams/models``:

* parity: forward and input gradient of the ``cuda`` backend (mamba-ssm's
  ``mamba_inner_fn``) against the ``torch`` backend, same weights, fp32,
  2 s of audio;
* one bf16 (autocast) training step (Adam, uPIT SI-SNR): finite loss and
  gradients;

then times SepMamba-S's forward on 4 s of 8 kHz audio, batch 1 (the paper:
17.8 ms and 2.0 GB on its GPU) with its peak memory, and prints one table.
On a machine without CUDA it says so in one line and exits 0.

    python benchmarks/gpu_check.py [--json out.json]

Authors
-------
 * sb_mamba developers
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FRAGMENTS = sorted((ROOT / "hparams" / "models").glob("*.yaml"))


def build(path, backend, device):
    from sb_mamba.nnet.mamba import set_ssm_backend
    from sb_mamba.resources import load_fragment

    torch.manual_seed(0)
    model = load_fragment(Path(path).name)["separator"]
    set_ssm_backend(model, backend)  # a run option (S4M has no Mamba: nothing to set)
    return model.to(device)


def parity(path, device, seconds=2.0):
    """Max relative difference of output and input gradient, cuda vs torch backend."""
    from sb_mamba.nnet.mamba import Mamba

    sr = 16000 if "16k" in path.stem else 8000
    fast, ref = build(path, "cuda", device), build(path, "torch", device)
    ref.load_state_dict(fast.state_dict())
    mix = torch.randn(1, int(seconds * sr), device=device)
    out = []
    for model in (fast, ref):
        x = mix.clone().requires_grad_()
        est = model(x)
        est.square().mean().backward()
        out.append((est.detach(), x.grad))
    rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*out))
    return rel, sum(isinstance(m, Mamba) for m in fast.modules())


def bf16_step(path, device, seconds=2.0):
    """One autocast-bf16 training step; returns (loss, all gradients finite)."""
    from sb_mamba.metrics import pit_si_snr_loss

    sr = 16000 if "16k" in path.stem else 8000
    model = build(path, "auto", device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    src = torch.randn(2, int(seconds * sr), 2, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        est = model(src.sum(-1))
    loss = pit_si_snr_loss(src, est.float()).mean()
    loss.backward()
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    return loss.item(), finite


def time_forward(device, repeats=20):
    """SepMamba-S forward on 4 s at 8 kHz, batch 1: median ms and peak GB."""
    model = build(ROOT / "hparams" / "models" / "sepmamba_s.yaml", "auto", device).eval()
    mix = torch.randn(1, 32000, device=device)
    with torch.no_grad():
        for _ in range(3):
            model(mix)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(mix)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check.")
        return 0
    from sb_mamba.nnet.scan import mamba_ssm_ops, resolve_backend

    device = torch.device("cuda")
    backend = resolve_backend("auto", device)
    ops = {k: v is not None for k, v in mamba_ssm_ops().items()}
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; auto -> {backend}; mamba-ssm functions: {ops}"
    )
    rows, ok = [], backend == "cuda"
    for path in FRAGMENTS:
        row = {"fragment": path.stem}
        try:
            row["parity_rel"], row["mamba_layers"] = parity(path, device)
            row["bf16_loss"], row["bf16_grads_finite"] = bf16_step(path, device)
            row["ok"] = row["parity_rel"] < 1e-3 and row["bf16_grads_finite"]
        except Exception as e:  # report every fragment, then fail
            row["error"], row["ok"] = f"{type(e).__name__}: {e}", False
        ok &= row["ok"]
        rows.append(row)
        torch.cuda.empty_cache()
    ms, gb = time_forward(device)
    print(f"\n{'fragment':<22}{'Mamba layers':>13}{'parity (rel)':>14}{'bf16 loss':>11}  ok")
    for r in rows:
        if "error" in r:
            print(f"{r['fragment']:<22}  ERROR {r['error']}")
            continue
        print(
            f"{r['fragment']:<22}{r['mamba_layers']:>13}{r['parity_rel']:>14.2e}"
            f"{r['bf16_loss']:>11.3f}  {'yes' if r['ok'] else 'NO'}"
        )
    print(
        f"\nSepMamba-S forward, 4 s at 8 kHz, batch 1: {ms:.1f} ms, peak {gb:.2f} GB "
        "(paper: 17.8 ms, 2.0 GB)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name(),
                    "torch": torch.__version__,
                    "auto": backend,
                    "ops": ops,
                    "fragments": rows,
                    "sepmamba_s_forward_ms": ms,
                    "sepmamba_s_peak_gb": gb,
                },
                indent=1,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
