"""Structured state-space (S4) layer in pure PyTorch, as used by S4M.

Causal or bidirectional FFT convolution with an SSM kernel (full S4 or S4D,
see :mod:`sb_mamba.nnet.s4_kernel`), ``D`` skip, activation and GLU output.
No pykeops or CUDA extension. Parameter names, shapes and optimizer hints
(``_optim``) follow the reference ``s4.py`` of JusperLee/S4M (a copy of the
HazyResearch standalone S4), so state dicts line up.

Authors
-------
 * sb_mamba developers
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_mamba.nnet.s4_kernel import S4Kernel

_ACTIVATIONS = {
    None: nn.Identity,
    "id": nn.Identity,
    "identity": nn.Identity,
    "linear": nn.Identity,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def _activation(name, dim=-1):
    if name != "glu" and name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    return nn.GLU(dim=dim) if name == "glu" else _ACTIVATIONS[name]()


def fft_conv(u, k, D=None, bidirectional=False):
    """FFT convolution of (B, H, L) ``u`` with a (C, H, Lk) kernel, plus ``D u``.

    Causal: ``y_t = sum_{s<Lk} k_s u_{t-s}``. Bidirectional (2C kernel
    channels, the first C causal): ``y_t = sum_{s<Lk} k0_s u_{t-s} +
    sum_{j=1..Lk} k1_{j-1} u_{t+j}`` (the reference two-sided kernel).
    Returns (B, C, H, L).

    Example
    -------
    >>> fft_conv(torch.randn(2, 3, 10), torch.randn(2, 3, 10), torch.randn(1, 3), True).shape
    torch.Size([2, 1, 3, 10])
    """
    L, n = u.size(-1), u.size(-1) + k.size(-1)
    if bidirectional:
        k0, k1 = k.chunk(2, dim=0)
        k = F.pad(k0, (0, L)) + F.pad(k1.flip(-1), (L, 0))
    u = u.to(torch.promote_types(u.dtype, k.dtype))
    y = torch.fft.irfft(torch.fft.rfft(u, n=n).unsqueeze(1) * torch.fft.rfft(k, n=n), n=n)
    y = y[..., :L]
    return y if D is None else y + u.unsqueeze(1) * D.unsqueeze(-1)


class S4(nn.Module):
    """S4 layer: SSM convolution with D skip, activation, dropout, linear + GLU.

    Arguments
    ---------
    d_model, d_state : int
        Number of features H and state size N (S4M: 16).
    l_max : int, optional
        Maximum kernel length; None: the kernel spans the input (extended by
        doubling when a longer input arrives).
    channels : int
        SSM output channels per feature.
    bidirectional : bool
        Two-sided (non-causal) kernel: output t also sees inputs after t.
    activation, postact : str
        Activation after the SSM, and of the output linear ("glu" doubles it).
    dropout, tie_dropout : float, bool
        Dropout after the activation (tie_dropout: one mask over time).
    transposed : bool
        True: input and output are (B, H, L); False: (B, L, H).
    mode, measure, rank, dt_min, dt_max, lr, n_ssm, **kernel_args
        Kernel options, see :class:`S4Kernel`.

    Example
    -------
    >>> layer = S4(16, d_state=16, bidirectional=True)  # as in S4M
    >>> y, state = layer(torch.randn(2, 16, 50))
    >>> y.shape, state
    (torch.Size([2, 16, 50]), None)
    >>> S4(16, transposed=False)(torch.randn(2, 50, 16))[0].shape
    torch.Size([2, 50, 16])
    >>> k = layer.ssm_kernel(50)  # computed once, reused
    >>> layer(torch.randn(2, 16, 50), kernel=k)[0].shape
    torch.Size([2, 16, 50])
    """

    def __init__(
        self,
        d_model,
        d_state=64,
        l_max=None,
        channels=1,
        bidirectional=False,
        activation="gelu",
        postact="glu",
        dropout=0.0,
        tie_dropout=False,
        transposed=True,
        mode="nplr",
        measure=None,
        rank=1,
        dt_min=0.001,
        dt_max=0.1,
        lr=None,
        n_ssm=None,
        **kernel_args,
    ):
        super().__init__()
        self.d_model = self.H = d_model
        self.N, self.L, self.channels = d_state, l_max, channels
        self.bidirectional, self.transposed = bidirectional, transposed
        self.D = nn.Parameter(torch.randn(channels, d_model))
        self.kernel = S4Kernel(
            d_model,
            N=d_state,
            L=l_max,
            measure=measure,
            rank=rank,
            channels=channels * (2 if bidirectional else 1),
            dt_min=dt_min,
            dt_max=dt_max,
            lr=lr,
            mode=mode,
            n_ssm=n_ssm,
            **kernel_args,
        )
        self.activation = _activation(activation)
        drop = nn.Dropout1d if tie_dropout else nn.Dropout
        self.dropout = drop(dropout) if dropout > 0.0 else nn.Identity()
        d_out = d_model * (2 if postact == "glu" else 1)
        linear = (
            nn.Conv1d(d_model * channels, d_out, 1)
            if transposed
            else nn.Linear(d_model * channels, d_out)
        )
        self.output_linear = (
            linear
            if postact is None
            else nn.Sequential(linear, _activation(postact, dim=-2 if transposed else -1))
        )

    @property
    def d_output(self):
        return self.d_model

    def ssm_kernel(self, L, rate=1.0):
        """The SSM convolution kernel that :meth:`forward` uses on ``L`` frames.

        It depends only on the parameters, ``L`` and ``rate``: a caller that
        applies the layer several times at one length (S4M's shared block)
        computes it once and passes it to :meth:`forward` (one autograd graph
        instead of one per call; gradients are unchanged).

        Arguments
        ---------
        L : int
            Input length.
        rate : float
            Sampling-rate factor of the kernel (1.0: as trained).

        Returns
        -------
        torch.Tensor
            (C, H, L'), with 2C channels if bidirectional; ``L' = L`` unless
            ``l_max`` is shorter.

        Example
        -------
        >>> S4(8, d_state=16, channels=2, bidirectional=True).ssm_kernel(30).shape
        torch.Size([4, 8, 30])
        """
        return self.kernel(L=L if self.L is None else min(L, round(self.L / rate)), rate=rate)

    def forward(self, u, state=None, rate=1.0, lengths=None, kernel=None):
        """Returns ``(y, None)`` (as the reference), y shaped as ``u``.

        Arguments
        ---------
        u : torch.Tensor
            (B, H, L) if ``transposed`` else (B, L, H).
        state : None
            Recurrent state passing is not supported.
        rate : float
            Sampling-rate factor of the kernel (1.0: as trained).
        lengths : int or torch.Tensor, optional
            Valid lengths; later frames of ``u`` are zeroed first.
        kernel : torch.Tensor, optional
            ``self.ssm_kernel(L, rate)``, computed beforehand; None: computed here.
        """
        if state is not None:
            raise NotImplementedError("S4 state passing is not supported")
        if not self.transposed:
            u = u.transpose(-1, -2)
        L = u.size(-1)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=u.device).reshape(-1, 1, 1)
            u = u * (torch.arange(L, device=u.device) < lengths)
        k = self.ssm_kernel(L, rate) if kernel is None else kernel
        y = fft_conv(u, k, self.D, self.bidirectional).flatten(1, 2)  # (B, C*H, L)
        y = self.dropout(self.activation(y))
        if not self.transposed:
            y = y.transpose(-1, -2)
        return self.output_linear(y), None
