"""Selective scan: every backend against the sequential reference.

Authors
-------
 * sb_mamba developers
"""

import logging
import subprocess
import sys

import pytest
import torch

from sb_mamba.nnet import scan
from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
from sb_mamba.nnet.scan import resolve_backend, selective_scan
from sb_mamba.nnet.scan_torch import selective_scan_ref
from tests.helpers import CPU_BACKENDS, LENGTHS, make_scan_inputs


def _inputs(b=2, d=6, n=4, length=37, b_shape="bnl", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    shapes = {"bnl": (b, n, length), "bgnl": (b, 2, n, length), "dn": (d, n)}
    return dict(
        u=r(b, d, length),
        delta=0.5 * r(b, d, length),
        A=-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1,
        B=r(*shapes[b_shape]),
        C=r(*shapes[b_shape]),
        D=r(d),
        z=r(b, d, length),
        delta_bias=0.3 * r(d),
    )


def _ref_call(t, **kw):
    """Reference call; expands a time-invariant (dim, N) B/C per channel."""
    t = dict(t)
    if t["B"].dim() == 2:
        b, length = t["u"].shape[0], t["u"].shape[-1]
        for k in ("B", "C"):
            t[k] = t[k][None, :, :, None].expand(b, -1, -1, length)
    return selective_scan_ref(**t, **kw)


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("b_shape", ["bnl", "bgnl", "dn"])
@pytest.mark.parametrize(
    "use_z,use_bias,softplus",
    [(True, True, True), (False, False, False), (True, False, True), (False, True, False)],
)
def test_matches_reference_values_and_grads(backend, b_shape, use_z, use_bias, softplus):
    t = _inputs(b_shape=b_shape)
    if not use_z:
        t["z"] = None
    if not use_bias:
        t["delta_bias"] = None
    if not softplus:  # keep the step sizes positive without softplus
        t["delta"] = t["delta"].abs() + 0.05
    names = [k for k, v in t.items() if v is not None]
    ref_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    out_in = {
        k: (v.float().clone().requires_grad_() if v is not None else None) for k, v in t.items()
    }
    ref = _ref_call(ref_in, delta_softplus=softplus)
    out = selective_scan(**out_in, delta_softplus=softplus, backend=backend)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel_err(out, ref) < 1e-5
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-4, atol=1e-5)

    gy = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g_ref = torch.autograd.grad((ref * gy).sum(), [ref_in[k] for k in names])
    g_out = torch.autograd.grad((out * gy.float()).sum(), [out_in[k] for k in names])
    for k, a, b in zip(names, g_out, g_ref):
        assert a.shape == b.shape, k
        assert _rel_err(a, b) < 1e-4, (k, _rel_err(a, b))
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * scale, msg=k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length", [1, 255, 256, 700])
def test_lengths_and_last_state(backend, length):
    """Lengths around the kernel's checkpoint chunk (256) and a single step."""
    t = _inputs(b=1, d=3, n=5, length=length)
    ref, ref_last = selective_scan_ref(**t, delta_softplus=True, return_last_state=True)
    t32 = {k: v.float() for k, v in t.items()}
    out, last = selective_scan(**t32, delta_softplus=True, return_last_state=True, backend=backend)
    assert last.shape == (1, 3, 5) and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_half_precision_keeps_fp32_state(backend):
    t = {k: v.float() for k, v in _inputs(length=300).items()}
    ref = selective_scan(**t, delta_softplus=True, backend=backend)
    t16 = {k: v.bfloat16() for k, v in t.items()}
    out, last = selective_scan(**t16, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    # Only the inputs were rounded to bf16: the error stays at bf16's level.
    assert _rel_err(out.float(), ref) < 3e-2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_propagates(backend):
    t = {k: v.float() for k, v in _inputs(length=20).items()}
    t["u"][0, 1, 5] = float("nan")
    out = selective_scan(**t, delta_softplus=True, backend=backend)
    assert torch.isnan(out[0, 1, 5:]).all()
    assert torch.isfinite(out[1]).all()


def test_bad_arguments_give_clear_errors():
    t = {k: v.float() for k, v in _inputs().items()}
    with pytest.raises(ValueError, match="ssm_backend"):
        selective_scan(**t, backend="fast")
    with pytest.raises(ValueError, match="real A"):
        selective_scan(**{**t, "A": t["A"].to(torch.complex64)}, backend="torch")
    with pytest.raises(ValueError, match="batch, N, L"):
        selective_scan(**{**t, "B": t["B"][..., :-1]}, backend="torch")
    # explicit "cuda" always calls mamba-ssm, whatever the device: here it is missing
    with pytest.raises(ImportError, match=r"pip install 'sb_mamba\[cuda\]'"):
        selective_scan(**t, backend="cuda")


@pytest.fixture(autouse=True)
def _fresh_backends(fresh_backends):
    """These tests change what resolves: start and end with nothing cached."""


def test_cuda_backend_error_names_the_install(monkeypatch):
    monkeypatch.setattr(scan, "cuda_scan_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'sb_mamba\[cuda\]'"):
        resolve_backend("cuda", "cuda")


def test_auto_on_cuda_without_mamba_ssm_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(scan, "cuda_scan_available", lambda: False)
    monkeypatch.setattr(scan, "_warned", set())
    with caplog.at_level(logging.WARNING):
        assert resolve_backend("auto", "cuda") == "torch"
        assert resolve_backend("auto", "cuda") == "torch"
    msgs = [r for r in caplog.records if "FALLING BACK" in r.getMessage()]
    assert len(msgs) == 1


def test_cpu_kernel_unavailable_falls_back_with_one_warning(monkeypatch, caplog):
    import sb_mamba.nnet._cpu_kernel as ck

    monkeypatch.setattr(ck, "load_cpu_kernel", lambda: None)
    monkeypatch.setattr(scan, "_warned", set())
    t = {k: v.float() for k, v in _inputs(length=10).items()}
    with caplog.at_level(logging.WARNING):
        y1 = selective_scan(**t, backend="cpu_kernel")
        y2 = selective_scan(**t, backend="auto")
        y3 = selective_scan(**t, backend="cpu_kernel")
    assert torch.equal(y1, y2) and torch.equal(y1, y3)
    msgs = [r for r in caplog.records if "FALLING BACK" in r.getMessage()]
    assert len(msgs) == 2  # one per distinct fallback (explicit, auto), not per call


def test_auto_prefers_cpu_kernel():
    if "cpu_kernel" not in CPU_BACKENDS:
        pytest.skip("SB_MAMBA_NO_CPU_KERNEL=1")
    assert resolve_backend("auto", "cpu") == "cpu_kernel"


def test_no_top_level_mamba_ssm_import():
    code = (
        "import sys, sb_mamba.nnet.mamba, sb_mamba.nnet.scan\n"
        "assert 'mamba_ssm' not in sys.modules\n"
        "assert 'causal_conv1d' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# The fused scan of sb_mamba.nnet.fused (time-major, with the step-size
# projection, softplus, D skip and silu(z) gate) against its definition.
# ---------------------------------------------------------------------------


def reference_mamba_scan(u, z, xdbl, w_dt, dt_bias, A, D, reverse):
    """The fused scan's definition, sequential, float64, with autograd.

    Arguments
    ---------
    u, z : torch.Tensor
        (B, L, Di).
    xdbl : torch.Tensor
        (B, L, R + 2S): [dt_low | B | C].
    w_dt, dt_bias, A, D : torch.Tensor
        (Di, R), (Di,), (Di, S), (Di,).
    reverse : bool
        Scan backwards in time.

    Returns
    -------
    y : torch.Tensor
        (B, L, Di).
    last_state : torch.Tensor
        (B, S, Di).
    """
    if reverse:
        y, last = reference_mamba_scan(
            u.flip(1), z.flip(1), xdbl.flip(1), w_dt, dt_bias, A, D, False
        )
        return y.flip(1), last
    R, S = w_dt.shape[1], A.shape[1]
    dt_low, Bm, Cm = torch.split(xdbl, [R, S, S], dim=-1)
    delta = torch.nn.functional.softplus(dt_low @ w_dt.t() + dt_bias)  # (B, L, Di)
    x = u.new_zeros(u.shape[0], u.shape[2], S)
    ys = []
    for t in range(u.shape[1]):
        dt = delta[:, t, :, None]
        x = torch.exp(dt * A) * x + dt * u[:, t, :, None] * Bm[:, t, None, :]
        ys.append((x * Cm[:, t, None, :]).sum(-1))
    y = (torch.stack(ys, 1) + D * u) * torch.nn.functional.silu(z)
    return y, x.transpose(1, 2)


@pytest.mark.skipif("cpu_kernel" not in CPU_BACKENDS, reason="SB_MAMBA_NO_CPU_KERNEL=1")
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("Di, S, R", [(32, 16, 2), (20, 5, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_scan_matches_reference(L, Di, S, R, reverse):
    """Forward, final state and all gradients against float64 autograd."""
    xz, xdbl, w_dt, dt_bias, A, D, gy = make_scan_inputs(2, L, Di, S, R, seed=L)
    u, z = xz[..., :Di], xz[..., Di:]
    y_ref, last_ref = reference_mamba_scan(u, z, xdbl, w_dt, dt_bias, A, D, reverse)
    params = [xz, xdbl, w_dt, dt_bias, A, D]
    g_ref = torch.autograd.grad((y_ref * gy).sum(), params)

    kernel = load_cpu_kernel()
    xz32, xdbl32, w32, b32, A32, D32 = [t.detach().float() for t in params]
    u32, z32 = xz32[..., :Di], xz32[..., Di:]
    chunk = 64 if L > 3 else 2
    y = torch.empty(2, L, Di)
    ckpt = kernel.mamba_scan_fwd(u32, z32, xdbl32, w32, b32, A32, D32, y, reverse, chunk, True)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref.detach(), **tol)
    assert ckpt.shape == (2, -(-L // chunk) + 1, S, Di)
    torch.testing.assert_close(ckpt[:, -1].double(), last_ref.detach(), **tol)

    gxz = torch.full((2, L, 2 * Di), float("nan"))
    gxdbl = torch.full((2, L, R + 2 * S), float("nan"))
    g_wdt, g_bias, g_A, g_D = kernel.mamba_scan_bwd(
        u32,
        z32,
        xdbl32,
        w32,
        b32,
        A32,
        D32,
        ckpt,
        gy.float(),
        gxz[..., :Di],
        gxz[..., Di:],
        gxdbl,
        reverse,
        chunk,
    )
    grads = [gxz, gxdbl, g_wdt, g_bias, g_A, g_D]
    names = ["xz", "xdbl", "w_dt", "dt_bias", "A", "D"]
    for name, g, gr in zip(names, grads, g_ref):
        assert g.shape == gr.shape and g.dtype == torch.float32, name
        scale = gr.abs().max().item()
        torch.testing.assert_close(
            g.double(),
            gr,
            rtol=1e-4,
            atol=1e-5 * max(scale, 1.0),
            msg=lambda m, n=name: f"{n}: {m}",
        )
