"""Fused CPU inner path of a Mamba mixer (between in_proj and out_proj).

mamba-ssm's ``mamba_inner_fn`` fuses, on CUDA, everything a Mamba mixer does
between its input and output projections. :func:`mamba_inner_cpu` does the
same on CPU with the C++ kernels of :mod:`sb_mamba.nnet._cpu_kernel`, in the
time-major ``[B, L, channels]`` layout that ``nn.Linear`` produces, so no
transpose or flip is ever copied::

    x, z  = xz.chunk(2, dim=-1)                      # in_proj's output
    xc    = silu(causal_depthwise_conv(x) + conv_bias)
    [dt_low | B | C] = xc @ x_proj_weight.T
    delta = softplus(dt_low @ dt_proj_weight.T + dt_proj_bias)
    y     = (selective_scan(xc, delta, -exp(A_log), B, C) + D * xc) * silu(z)

Two kernels do the work: the convolution + SiLU, and the step-size
projection + softplus + scan + skip + gate (one pass over time per block of
16 channels). Only ``x_proj`` stays a matrix product in between. The
backward kernels recompute the cheap parts (activations, step sizes, the
scan's states from chunk checkpoints) instead of storing them. Without
autograd nothing is stored for a backward pass, and with ``inplace=True``
the results overwrite ``xz``. :func:`mamba_mixer_inference_cpu` runs a whole
mixer without autograd over segments of time (the working memory no longer
grows with the length), and :func:`mamba_mixer_cpu` is what
:class:`~sb_mamba.nnet.mamba.Mamba` calls on this path.

``reverse=True`` computes the mixer on the time-reversed sequence and
returns the result in the original order (what BiMamba's backward stack
does), by running the convolution and the scan backwards in time.

Authors
-------
 * sb_mamba developers
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
from sb_mamba.nnet.scan import resolve_backend, selective_scan

CHUNK = 64  # steps between the scan's state checkpoints (training only)
# Segments of mamba_mixer_inference_cpu: in_proj's output of one segment takes
# about this many bytes (8192 steps for Di = 128, 2048 for Di = 512): few
# enough segments that the threads meet at few barriers, small enough that
# the working memory stays low.
SEGMENT_BYTES = 8 * 2**20


def fused_path_applies(mixer, x):
    """Whether a Mamba mixer runs on the fused kernels for the input ``x``.

    Arguments
    ---------
    mixer : sb_mamba.nnet.mamba.Mamba
        The mixer (its ``ssm_backend`` and parameters are looked at).
    x : torch.Tensor
        Its input [B, L, N].

    Returns
    -------
    bool
        True for float32 CPU tensors and parameters outside autocast, when
        the backend resolves to ``"cpu_kernel"``.

    Example
    -------
    >>> from sb_mamba.nnet.mamba import Mamba
    >>> fused_path_applies(Mamba(8, ssm_backend="torch"), torch.randn(1, 4, 8))
    False
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or _cpu_autocast_enabled():
        return False
    if any(p.dtype != torch.float32 for p in mixer.parameters()):
        return False
    return resolve_backend(mixer.ssm_backend, x.device) == "cpu_kernel"


def mamba_mixer_cpu(mixer, hidden_states, reverse=False):
    """A Mamba mixer's forward on the fused kernels, [B, L, N] -> [B, L, N].

    With autograd (an input or a parameter requires grad):
    ``out_proj(mamba_inner_cpu(in_proj(x)))``; without:
    :func:`mamba_mixer_inference_cpu`.

    Arguments
    ---------
    mixer : sb_mamba.nnet.mamba.Mamba
        The mixer whose parameters are used.
    hidden_states : torch.Tensor
        [B, L, N].
    reverse : bool
        Run on the time-reversed sequence (output in the original order).

    Returns
    -------
    torch.Tensor
        [B, L, N].

    Example
    -------
    >>> from sb_mamba.nnet.mamba import Mamba
    >>> mamba_mixer_cpu(Mamba(8, d_state=4), torch.randn(2, 9, 8)).shape
    torch.Size([2, 9, 8])
    """
    m = mixer
    inner = (m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
             m.dt_proj.bias, m.A_log, m.D)
    if torch.is_grad_enabled() and (
        hidden_states.requires_grad or any(p.requires_grad for p in m.parameters())
    ):
        xz = m.in_proj(hidden_states)  # [B, L, 2 * Di]
        y = mamba_inner_cpu(xz, *inner, reverse=reverse, inplace=True)  # [B, L, Di]
        return m.out_proj(y)
    return mamba_mixer_inference_cpu(
        hidden_states, m.in_proj.weight, m.in_proj.bias, *inner, m.out_proj.weight,
        m.out_proj.bias, reverse=reverse,
    )


def _cpu_autocast_enabled():
    """Whether CPU autocast is on (with the torch >= 2.1 APIs)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def mamba_inner_cpu(
    xz,
    conv_weight,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    dt_proj_bias,
    A_log,
    D,
    reverse=False,
    inplace=False,
):
    """Mamba's inner path on CPU with the fused kernels, [B, L, 2Di] -> [B, L, Di].

    Falls back to :func:`mamba_inner_ref` when the C++ kernels are not
    available or the tensors are not float32 CPU tensors.

    Arguments
    ---------
    xz : torch.Tensor
        [B, L, 2 * Di], the output of ``in_proj`` (x then z).
    conv_weight : torch.Tensor
        [Di, 1, K], the depthwise convolution's weight.
    conv_bias : torch.Tensor or None
        [Di].
    x_proj_weight : torch.Tensor
        [R + 2 * S, Di].
    dt_proj_weight : torch.Tensor
        [Di, R].
    dt_proj_bias : torch.Tensor
        [Di].
    A_log : torch.Tensor
        [Di, S]; the state matrix is ``-exp(A_log)``.
    D : torch.Tensor
        [Di], the skip connection.
    reverse : bool
        Run on the time-reversed sequence (output in the original order).
    inplace : bool
        Without autograd, overwrite ``xz`` and return a view of it.

    Returns
    -------
    torch.Tensor
        [B, L, Di], the input of ``out_proj``.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> Di, R, S = 32, 2, 4
    >>> xz = torch.randn(2, 50, 2 * Di, generator=g)
    >>> shapes = [(Di, 1, 4), (Di,), (R + 2 * S, Di), (Di, R), (Di,), (Di, S), (Di,)]
    >>> params = [0.3 * torch.randn(s, generator=g) for s in shapes]
    >>> y = mamba_inner_cpu(xz, *params)
    >>> y.shape
    torch.Size([2, 50, 32])
    >>> torch.allclose(y, mamba_inner_ref(xz, *params), rtol=1e-4, atol=1e-5)
    True
    """
    params = (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    tensors = [xz] + [p for p in params if p is not None]
    kernel = load_cpu_kernel()
    if kernel is None or any(
        t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors
    ):
        return mamba_inner_ref(xz, *params, reverse=reverse)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _MambaInnerFn.apply(xz, *params, reverse)
    with torch.no_grad():
        return _inner_inference(kernel, xz, *params, reverse, inplace)


def mamba_inner_ref(
    xz,
    conv_weight,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    dt_proj_bias,
    A_log,
    D,
    reverse=False,
):
    """Pure-PyTorch twin of :func:`mamba_inner_cpu` (any device and dtype).

    Arguments
    ---------
    xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D
        As in :func:`mamba_inner_cpu`.
    reverse : bool
        Run on the time-reversed sequence (output in the original order).

    Returns
    -------
    torch.Tensor
        [B, L, Di].

    Example
    -------
    >>> Di, R, S = 8, 1, 2
    >>> params = [torch.randn(Di, 1, 4), None, torch.randn(R + 2 * S, Di),
    ...           torch.randn(Di, R), torch.randn(Di), torch.randn(Di, S), torch.ones(Di)]
    >>> mamba_inner_ref(torch.randn(1, 5, 2 * Di), *params).shape  # [B, L, Di]
    torch.Size([1, 5, 8])
    """
    if reverse:
        return mamba_inner_ref(
            xz.flip(1), conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
            dt_proj_bias, A_log, D,
        ).flip(1)
    L, Di = xz.shape[1], xz.shape[2] // 2
    R, S = dt_proj_weight.shape[1], A_log.shape[1]
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # [B, Di, L] each
    K = conv_weight.shape[-1]
    x = F.conv1d(x, conv_weight.reshape(Di, 1, K), conv_bias, padding=K - 1, groups=Di)
    x = F.silu(x[..., :L])
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # [B, L, R + 2S]
    dt, B, C = torch.split(x_dbl, [R, S, S], dim=-1)
    y = selective_scan(
        x,
        F.linear(dt, dt_proj_weight).transpose(1, 2),
        -torch.exp(A_log.float()),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D.float(),
        z=z,
        delta_bias=dt_proj_bias.float(),
        delta_softplus=True,
        backend="torch",
    )
    return y.transpose(1, 2)


def mamba_mixer_inference_cpu(
    hidden_states,
    in_proj_weight,
    in_proj_bias,
    conv_weight,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    dt_proj_bias,
    A_log,
    D,
    out_proj_weight,
    out_proj_bias,
    reverse=False,
    segment=None,
):
    """A whole Mamba mixer without autograd, [B, L, N] -> [B, L, N].

    ``out_proj(mamba_inner_cpu(in_proj(hidden_states)))``, computed over
    segments of ``segment`` time steps that carry the convolution's last
    inputs and the scan's state from one segment to the next: the working
    memory is a few ``[B, segment, 2Di]`` buffers whatever the length.

    Arguments
    ---------
    hidden_states : torch.Tensor
        [B, L, N].
    in_proj_weight, in_proj_bias : torch.Tensor
        [2 * Di, N] and [2 * Di] (or None).
    conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D
        As in :func:`mamba_inner_cpu`.
    out_proj_weight, out_proj_bias : torch.Tensor
        [N_out, Di] and [N_out] (or None).
    reverse : bool
        Run on the time-reversed sequence (output in the original order).
    segment : int, optional
        Time steps per segment; by default ``SEGMENT_BYTES`` of in_proj's
        output (at least 256 steps).

    Returns
    -------
    torch.Tensor
        [B, L, N_out].

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> N, Di, R, S = 8, 16, 1, 4
    >>> shapes = [(2 * Di, N), (Di, 1, 4), (Di,), (R + 2 * S, Di), (Di, R), (Di,),
    ...           (Di, S), (Di,), (N, Di)]
    >>> w = [0.3 * torch.randn(s, generator=g) for s in shapes]
    >>> w = w[:1] + [None] + w[1:] + [None]  # no in_proj / out_proj bias
    >>> h = torch.randn(2, 100, N, generator=g)
    >>> y = mamba_mixer_inference_cpu(h, *w, segment=30)
    >>> y.shape
    torch.Size([2, 100, 8])
    >>> ref = F.linear(mamba_inner_ref(F.linear(h, w[0]), *w[2:9]), w[9])
    >>> torch.allclose(y, ref, rtol=1e-4, atol=1e-5)
    True
    """
    inner = (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    tensors = [hidden_states, in_proj_weight, out_proj_weight]
    tensors += [t for t in inner + (in_proj_bias, out_proj_bias) if t is not None]
    k = load_cpu_kernel()
    with torch.no_grad():
        if k is None or any(
            t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors
        ):
            xz = F.linear(hidden_states, in_proj_weight, in_proj_bias)
            y = mamba_inner_ref(xz, *inner, reverse=reverse)
            return F.linear(y, out_proj_weight, out_proj_bias)
        B, L = hidden_states.shape[:2]
        Di, K = conv_weight.shape[0], conv_weight.shape[-1]
        w2 = conv_weight.reshape(Di, K).contiguous()
        A = -torch.exp(A_log)
        wdt, bdt, Dc = dt_proj_weight.contiguous(), dt_proj_bias.contiguous(), D.contiguous()
        out = hidden_states.new_empty(B, L, out_proj_weight.shape[0])
        hist = hidden_states.new_zeros(B, K - 1, Di)  # last inputs of the conv
        state = hidden_states.new_zeros(B, A.shape[1], Di)  # the scan's state
        if segment is None:
            segment = max(256, SEGMENT_BYTES // (B * 2 * Di * 4))
        starts = list(range(0, L, segment))
        for t0 in reversed(starts) if reverse else starts:
            t1 = min(L, t0 + segment)
            xz = F.linear(hidden_states[:, t0:t1], in_proj_weight, in_proj_bias)
            x, z = xz[..., :Di], xz[..., Di:]
            if K > 1:  # the segment's last K - 1 inputs, in processing order
                last = x[:, : K - 1].flip(1) if reverse else x[:, -(K - 1):]
                new_hist = torch.cat([hist, last], 1)[:, -(K - 1):].contiguous()
            k.conv_silu_fwd(x, w2, conv_bias, x, reverse, hist)
            hist = new_hist if K > 1 else hist
            xdbl = F.linear(x, x_proj_weight).contiguous()
            k.mamba_scan_fwd(x, z, xdbl, wdt, bdt, A, Dc, x, reverse, CHUNK, False, state)
            out[:, t0:t1] = F.linear(x, out_proj_weight, out_proj_bias)
        return out


def _inner_inference(k, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                     dt_proj_bias, A_log, D, reverse, inplace):
    """No-autograd path: the conv output and then y overwrite x in ``xz``."""
    if not inplace or xz.stride(-1) != 1:
        xz = xz.clone(memory_format=torch.contiguous_format)
    Di = xz.shape[-1] // 2
    x, z = xz[..., :Di], xz[..., Di:]
    k.conv_silu_fwd(x, conv_weight.reshape(Di, -1).contiguous(), conv_bias, x, reverse)
    xdbl = F.linear(x, x_proj_weight).contiguous()  # [B, L, R + 2S]
    A = -torch.exp(A_log)
    k.mamba_scan_fwd(
        x, z, xdbl, dt_proj_weight.contiguous(), dt_proj_bias.contiguous(), A,
        D.contiguous(), x, reverse, CHUNK, False,
    )
    return x


class _MambaInnerFn(torch.autograd.Function):
    """Autograd wrapper of the fused kernels (see :func:`mamba_inner_cpu`)."""

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                dt_proj_bias, A_log, D, reverse):
        """Conv + SiLU, x_proj, fused scan; stores the scan's checkpoints."""
        k = load_cpu_kernel()
        xz = xz.contiguous()
        B, L, Di = xz.shape[0], xz.shape[1], xz.shape[2] // 2
        w2 = conv_weight.reshape(Di, -1).contiguous()
        xc = xz.new_empty(B, L, Di)
        k.conv_silu_fwd(xz[..., :Di], w2, conv_bias, xc, reverse)
        xdbl = F.linear(xc, x_proj_weight).contiguous()
        A = -torch.exp(A_log)
        wdt, bdt, Dc = dt_proj_weight.contiguous(), dt_proj_bias.contiguous(), D.contiguous()
        y = xz.new_empty(B, L, Di)
        ckpt = k.mamba_scan_fwd(
            xc, xz[..., Di:], xdbl, wdt, bdt, A, Dc, y, reverse, CHUNK, True
        )
        ctx.save_for_backward(xz, xc, xdbl, ckpt, w2, conv_bias, x_proj_weight, wdt,
                              bdt, A, Dc)
        ctx.reverse, ctx.conv_shape = reverse, conv_weight.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        """Fused scan backward, x_proj's products, conv + SiLU backward."""
        k = load_cpu_kernel()
        xz, xc, xdbl, ckpt, w2, cb, wx, wdt, bdt, A, Dc = ctx.saved_tensors
        B, L, Di = xc.shape
        gxz = torch.empty_like(xz)
        gx, gz = gxz[..., :Di], gxz[..., Di:]
        gxdbl = torch.empty_like(xdbl)
        g_wdt, g_bdt, gA, gD = k.mamba_scan_bwd(
            xc, xz[..., Di:], xdbl, wdt, bdt, A, Dc, ckpt, gy.contiguous(), gx, gz,
            gxdbl, ctx.reverse, CHUNK,
        )
        gxdbl2 = gxdbl.view(B * L, -1)
        gx.view(B * L, Di).addmm_(gxdbl2, wx)  # + the path through x_proj
        g_wx = gxdbl2.t() @ xc.view(B * L, Di)
        g_w, g_cb = k.conv_silu_bwd(xz[..., :Di], w2, cb, gx, ctx.reverse)
        return (
            gxz, g_w.view(ctx.conv_shape), g_cb if cb is not None else None, g_wx,
            g_wdt, g_bdt, gA * A, gD, None,
        )
