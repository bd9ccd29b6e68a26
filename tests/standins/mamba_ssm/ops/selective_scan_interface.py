"""Stand-in of ``mamba_ssm.ops.selective_scan_interface`` (tests only).

Signatures, layouts and dtype rules of mamba-ssm 2.x; ``mamba_inner_fn`` is
mamba-ssm's ``mamba_inner_ref``. The scan's arithmetic is sb_mamba's
``torch`` backend (float32 state, output in the input's dtype), as the CUDA
kernel keeps a float32 state.
"""

import torch
import torch.nn.functional as F

from mamba_ssm import CALLS


def _check(cond, msg):
    if not cond:
        raise RuntimeError(f"mamba_ssm stand-in: {msg}")


def selective_scan_fn(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
):
    """mamba-ssm's ``selective_scan_fn``: u, delta, z (b, d, l); A (d, n) float32."""
    from sb_mamba.nnet.scan import selective_scan

    CALLS["selective_scan_fn"] += 1
    _check(u.dim() == 3 and delta.shape == u.shape, "u and delta must be (b, d, l)")
    _check(u.dtype == delta.dtype, "u and delta must have the same dtype")
    _check(u.dtype in (torch.float32, torch.float16, torch.bfloat16), "u: fp32/fp16/bf16")
    _check(A.dtype == torch.float32, "A must be float32")
    _check(
        B.dtype in (torch.float32, u.dtype) and C.dtype in (torch.float32, u.dtype),
        "B and C must be float32 or u's dtype",
    )
    _check(B.dim() in (3, 4) and B.shape[-1] == u.shape[-1], "B must be (b, n, l) or (b, g, n, l)")
    if D is not None:
        _check(D.dtype == torch.float32 and D.shape == (u.shape[1],), "D must be float32 (d,)")
    if delta_bias is not None:
        _check(delta_bias.dtype == torch.float32, "delta_bias must be float32")
    if z is not None:
        _check(z.shape == u.shape and z.dtype == u.dtype, "z must match u")
    # the kernel makes the time dimension contiguous
    u, delta = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta))
    return selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend="torch"
    )


def mamba_inner_fn(
    xz,
    conv1d_weight,
    conv1d_bias,
    x_proj_weight,
    delta_proj_weight,
    out_proj_weight,
    out_proj_bias,
    A,
    B=None,
    C=None,
    D=None,
    delta_bias=None,
    B_proj_bias=None,
    C_proj_bias=None,
    delta_softplus=True,
    checkpoint_lvl=1,
    b_rms_weight=None,
    c_rms_weight=None,
    dt_rms_weight=None,
    b_c_dt_rms_eps=1e-6,
):
    """mamba-ssm's ``mamba_inner_fn`` (its ``mamba_inner_ref``): xz (b, 2 d, l) -> (b, l, n)."""
    from causal_conv1d import causal_conv1d_fn

    CALLS["mamba_inner_fn"] += 1
    _check(
        xz.dim() == 3 and xz.shape[1] == 2 * conv1d_weight.shape[0],
        "xz must be (batch, 2 * d_inner, L)",
    )
    _check(
        conv1d_weight.dim() == 3 and conv1d_weight.shape[1] == 1,
        "conv1d_weight must be (d_inner, 1, width)",
    )
    _check(B is None and C is None, "the stand-in covers the variable B / C case only")
    device = xz.device.type
    if torch.is_autocast_enabled(device):  # the kernel's custom_fwd casts
        dtype = torch.get_autocast_dtype(device)
        x_proj_weight = x_proj_weight.to(dtype)
        delta_proj_weight = delta_proj_weight.to(dtype)
        out_proj_weight = out_proj_weight.to(dtype)
        out_proj_bias = out_proj_bias.to(dtype) if out_proj_bias is not None else None
        xz = xz.to(dtype)
    L = xz.shape[-1]
    delta_rank, d_state = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight.squeeze(1), conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj_weight)  # ((b l), r + 2n)
    delta = delta_proj_weight @ x_dbl[:, :delta_rank].t()
    delta = delta.view(-1, xz.shape[0], L).transpose(0, 1)  # (b, d, l)
    Bv = x_dbl[:, delta_rank : delta_rank + d_state].view(xz.shape[0], L, -1).transpose(1, 2)
    Cv = x_dbl[:, -d_state:].view(xz.shape[0], L, -1).transpose(1, 2)
    y = selective_scan_fn(
        x,
        delta,
        A,
        Bv.contiguous(),
        Cv.contiguous(),
        D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
    )
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
