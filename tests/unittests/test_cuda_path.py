"""The ``cuda`` backend's calling code, checked on CPU through mamba-ssm stand-ins.

``ssm_backend="cuda"`` always calls mamba-ssm's functions, whatever the
device; with the stand-ins of ``tests/standins`` (pure PyTorch, mamba-ssm's
names, signatures and layouts) first on ``sys.path``, a Mamba mixer must run
what ``mamba_ssm.Mamba`` runs (``mamba_inner_fn`` once per layer, or
``F.conv1d`` + ``selective_scan_fn`` without causal-conv1d; the step kernels in
``step()``) and give the ``torch`` backend's numbers.

Authors
-------
 * sb_mamba developers
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from sb_mamba.nnet.bimamba import BiMamba
from sb_mamba.nnet.mamba import Mamba, set_ssm_backend

FRAGMENTS = sorted((Path(__file__).resolve().parents[2] / "hparams" / "models").glob("*.yaml"))
pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(module):
    """(module on the cuda backend, the same weights on the torch backend)."""
    ref = copy.deepcopy(module)
    set_ssm_backend(module, "cuda")
    set_ssm_backend(ref, "torch")
    return module, ref


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters()]


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_calls_mamba_inner_fn_once_and_matches_torch(mamba_ssm_standin, reverse):
    torch.manual_seed(0)
    m, ref = _pair(Mamba(32, d_state=8))
    x = torch.randn(2, 60, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = m(x, reverse=reverse)
    assert mamba_ssm_standin["mamba_inner_fn"] == 1
    assert mamba_ssm_standin["causal_conv1d_fn"] == 1  # inside mamba_inner_fn
    y_ref = ref(x_ref, reverse=reverse)
    assert (y - y_ref).abs().max().item() < 1e-5
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for g, g_ref in zip(_grads(m, x), _grads(ref, x_ref)):
        assert _rel(g, g_ref) < 1e-4


def test_without_causal_conv1d_runs_conv1d_and_selective_scan_fn(mamba_ssm_standin, monkeypatch):
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)  # not installed
    torch.manual_seed(0)
    m, ref = _pair(Mamba(16, d_state=4))
    x = torch.randn(2, 40, 16)
    y = m(x)
    assert mamba_ssm_standin["mamba_inner_fn"] == 0
    assert mamba_ssm_standin["selective_scan_fn"] == 1
    assert (y - ref(x)).abs().max().item() < 1e-5


def test_step_uses_the_step_kernels(mamba_ssm_standin):
    torch.manual_seed(0)
    m, ref = _pair(Mamba(16, d_state=4).eval())
    x = torch.randn(2, 12, 16)
    conv, ssm = m.allocate_inference_cache(2)
    with torch.no_grad():
        steps = torch.cat([m.step(x[:, t : t + 1], conv, ssm)[0] for t in range(12)], dim=1)
        full = ref(x)
    assert mamba_ssm_standin["causal_conv1d_update"] == 12
    assert mamba_ssm_standin["selective_state_update"] == 12
    assert (steps - full).abs().max().item() < 1e-5


def test_bimamba_reverse_stack_runs_on_the_cuda_path(mamba_ssm_standin):
    torch.manual_seed(0)
    bm, ref = _pair(BiMamba(16, num_blocks=2, d_state=4))
    x = torch.randn(1, 30, 16)
    y = bm(x)
    assert mamba_ssm_standin["mamba_inner_fn"] == 4  # 2 blocks x 2 directions
    assert (y - ref(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.stem)
def test_fragment_forward_backward_through_the_standin(mamba_ssm_standin, path, bf16):
    torch.manual_seed(0)
    text = path.read_text()
    overrides = {}
    if path.stem.startswith("spmamba"):  # 1 of its 6 identical blocks: the suite stays fast
        overrides["num_layers"] = 1
    model = load_hyperpyyaml(text, overrides)["separator"]
    model, ref = _pair(model)
    n_mamba = sum(isinstance(m, Mamba) for m in model.modules())
    sr = 16000 if "16k" in path.stem else 8000
    mix = torch.randn(1, sr // 10)  # 0.1 s
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        est = model(mix)
        assert mamba_ssm_standin["mamba_inner_fn"] == n_mamba  # once per Mamba layer
        est_ref = ref(mix)
    assert est.shape == est_ref.shape == (1, mix.shape[1], 2)
    assert torch.isfinite(est).all()
    tol = 5e-2 if bf16 else 1e-4  # relative to the largest output / gradient
    assert _rel(est, est_ref) < tol
    est.float().square().mean().backward()
    est_ref.float().square().mean().backward()
    grads = [
        (p.grad, q.grad) for p, q in zip(model.parameters(), ref.parameters()) if q.grad is not None
    ]
    assert grads and all(p is not None for p, _ in grads)
    # relative to the largest gradient of the model: some gradients are ~0 by symmetry
    # (e.g. a norm's shift before a softmax), where a per-tensor ratio is noise
    scale = max(g_ref.abs().max() for _, g_ref in grads)
    worst = max((g - g_ref).abs().max() for g, g_ref in grads) / scale
    assert worst < (5e-2 if bf16 else 1e-3), worst.item()


def test_auto_tries_mamba_ssm_once_per_process():
    """Without mamba-ssm, ``auto`` attempts the import once, then never again."""
    code = """
import importlib.abc, sys
attempts = []
class Count(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("mamba_ssm", "causal_conv1d"):
            attempts.append(name)
sys.meta_path.insert(0, Count())
import torch
from sb_mamba.nnet.mamba import Mamba, set_ssm_backend
from sb_mamba.nnet.scan import resolve_backend
assert resolve_backend("auto", "cuda") == "torch"
first = len(attempts)
for _ in range(5):
    assert resolve_backend("auto", "cuda") == "torch"
    resolve_backend("auto", "cpu")
Mamba(8, d_state=4)(torch.randn(1, 10, 8))
assert first == 1 and len(attempts) == first, attempts
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_gpu_check_on_a_cpu_machine_says_so_and_exits_0():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device on this machine; nothing to check."
    ]
