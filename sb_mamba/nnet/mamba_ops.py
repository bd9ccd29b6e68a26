"""Helpers of :mod:`sb_mamba.nnet.mamba`: the reference depthwise causal
convolution and mamba-ssm's weight initialisation (both also importable from
:mod:`sb_mamba.nnet.mamba`).

Authors
-------
 * sb_mamba developers
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def causal_depthwise_conv1d(x, weight, bias=None):
    """Causal depthwise convolution, [B, D, L] -> [B, D, L].

    On CUDA this is ``F.conv1d``. On CPU it is a sum of ``K`` shifted
    products, because PyTorch's CPU backward of a depthwise ``conv1d`` is
    about 20x slower than that (measured: 10 s against 0.5 s for
    B=4, D=64, L=16000, K=4, 2 threads).

    Arguments
    ---------
    x : torch.Tensor
        [B, D, L].
    weight : torch.Tensor
        [D, 1, K] (``nn.Conv1d(D, D, K, groups=D).weight``).
    bias : torch.Tensor, optional
        [D].

    Returns
    -------
    torch.Tensor
        [B, D, L]; output ``t`` sees inputs ``t-K+1 .. t``.

    Example
    -------
    >>> x, w = torch.randn(2, 3, 10), torch.randn(3, 1, 4)
    >>> ref = F.conv1d(x, w, padding=3, groups=3)[..., :10]
    >>> torch.allclose(causal_depthwise_conv1d(x, w), ref, atol=1e-6)
    True
    """
    D, _, K = weight.shape
    L = x.shape[-1]
    if x.is_cuda:
        return F.conv1d(x, weight, bias, padding=K - 1, groups=D)[..., :L]
    xp = F.pad(x, (K - 1, 0))  # [B, D, L + K - 1]
    w = weight[:, 0, :, None]  # [D, K, 1]
    y = w[:, 0] * xp[..., :L]
    for k in range(1, K):
        y = y + w[:, k] * xp[..., k : k + L]
    return y if bias is None else y + bias[:, None]


def init_mamba_weights(module, n_layer, n_residuals_per_layer=1):
    """mamba-ssm's ``_init_weights``: zero Linear biases, rescale out_proj.

    Apply with ``model.apply(partial(init_mamba_weights, n_layer=...))`` as
    mamba-ssm's ``create_block`` users (SepMamba, SPMamba) do.

    Arguments
    ---------
    module : torch.nn.Module
        Visited module.
    n_layer : int
        Number of residual blocks in the stack.
    n_residuals_per_layer : int
        Residual branches per block (1 for Mamba).
    """
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    for name, p in module.named_parameters():
        if name in ("out_proj.weight", "fc2.weight"):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_residuals_per_layer * n_layer)
