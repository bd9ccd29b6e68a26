"""Stand-in of ``mamba_ssm.ops.triton.selective_state_update`` (mamba-ssm's ``selective_state_update_ref``)."""

import torch
import torch.nn.functional as F

from mamba_ssm import CALLS


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None
):
    """One step: state (b, d, n) updated in place; x, dt, z (b, d); B, C (b, n); returns (b, d)."""
    CALLS["selective_state_update"] += 1
    if state.dim() != 3 or x.dim() != 2 or B.dim() != 2 or A.dim() != 2:
        raise RuntimeError("mamba_ssm stand-in: state (b, d, n), x (b, d), B (b, n), A (d, n)")
    if dt_bias is not None:
        dt = dt + dt_bias
    dt = F.softplus(dt) if dt_softplus else dt
    dA = torch.exp(dt[..., None] * A)  # (b, d, n)
    dB = dt[..., None] * B[:, None, :]
    state.copy_(state * dA + dB * x[..., None])
    out = torch.einsum("bdn,bn->bd", state.to(C.dtype), C)
    if D is not None:
        out = out + x * D
    return (out if z is None else out * F.silu(z)).to(x.dtype)
