"""Stand-in for causal-conv1d (tests only; see tests/standins/README.md)."""

import torch.nn.functional as F
from mamba_ssm import CALLS

__version__ = "0.0.0+standin"


def causal_conv1d_fn(
    x,
    weight,
    bias=None,
    seq_idx=None,
    initial_states=None,
    return_final_states=False,
    final_states_out=None,
    activation=None,
):
    """Depthwise causal convolution: x (b, d, l), weight (d, w) -> (b, d, l)."""
    CALLS["causal_conv1d_fn"] += 1
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    if weight.dim() != 2 or x.shape[1] != weight.shape[0]:
        raise RuntimeError("causal_conv1d stand-in: weight must be (dim, width)")
    if x.stride(2) != 1 and x.stride(1) != 1:
        raise RuntimeError("causal_conv1d stand-in: x must be contiguous in time or channels")
    width = weight.shape[1]
    out = F.conv1d(
        x,
        weight.unsqueeze(1).to(x.dtype),
        None if bias is None else bias.to(x.dtype),
        padding=width - 1,
        groups=x.shape[1],
    )[..., : x.shape[-1]]
    return out if activation is None else F.silu(out)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None):
    """One step: x (b, d), conv_state (b, d, w) updated in place; returns (b, d)."""
    CALLS["causal_conv1d_update"] += 1
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    conv_state.copy_(conv_state.roll(shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (conv_state * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return (out if activation is None else F.silu(out)).to(x.dtype)
