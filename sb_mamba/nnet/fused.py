"""Ops of a Mamba mixer's inner path (between in_proj and out_proj), on tensors.

Every function here takes tensors (the mixer's weights and its inputs) and
never a module: :class:`~sb_mamba.nnet.mamba.Mamba` chooses the path and
passes its parameters. The inner path, in the time-major ``[B, L, channels]``
layout that ``nn.Linear`` produces::

    x, z  = xz.chunk(2, dim=-1)                      # in_proj's output
    xc    = silu(causal_depthwise_conv(x) + conv_bias)
    [dt_low | B | C] = xc @ x_proj_weight.T
    delta = softplus(dt_low @ dt_proj_weight.T + dt_proj_bias)
    y     = (selective_scan(xc, delta, -exp(A_log), B, C) + D * xc) * silu(z)

* :func:`mamba_inner_ref`: those lines in PyTorch, with the scan on any
  backend of :func:`~sb_mamba.nnet.scan.selective_scan` (any device, dtype);
* :func:`mamba_inner_cpu`: the same on the fused C++ kernels of
  :mod:`sb_mamba.nnet._cpu_kernel` (float32 CPU tensors). Two kernels do the
  work: the convolution + SiLU, and the step-size projection + softplus +
  scan + skip + gate (one pass over time per block of 16 channels); only
  ``x_proj`` stays a matrix product in between, and no transpose or flip is
  ever copied. The backward kernels recompute the cheap parts (activations,
  step sizes, the scan's states from checkpoints) instead of storing them;
  without autograd nothing is stored and ``inplace=True`` overwrites ``xz``;
* :func:`mamba_mixer_inference_cpu`: a whole mixer (with both projections) on
  the kernels without autograd, over segments of time, so that the working
  memory no longer grows with the length; it can continue a stream from the
  convolution's last inputs and the scan's state, as
  :func:`mamba_mixer_chunk_cpu` does for the few frames of a real-time chunk.

``reverse=True`` computes the mixer on the time-reversed sequence and returns
the result in the original order (what BiMamba's backward stack does); the
kernels run the convolution and the scan backwards in time.

Authors
-------
 * sb_mamba developers
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
from sb_mamba.nnet.int8 import linear, out_features
from sb_mamba.nnet.scan import selective_scan

# Time steps between the fused scan's state checkpoints, which the training
# forward of mamba_inner_cpu stores for its backward pass.
FUSED_CHECKPOINT_STEPS = 64
# Segments of mamba_mixer_inference_cpu: in_proj's output of one segment takes
# about this many bytes (8192 steps for Di = 128, 2048 for Di = 512): few
# enough segments that the threads meet at few barriers, small enough that
# the working memory stays low.
SEGMENT_BYTES = 8 * 2**20


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
    >>> causal_depthwise_conv1d(x, w, torch.zeros(3)).shape
    torch.Size([2, 3, 10])
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
    backend="torch",
    hist=None,
    state=None,
):
    """Mamba's inner path in PyTorch, [B, L, 2Di] -> [B, L, Di] (any device, dtype).

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
    backend : str
        Backend of the selective scan (see :func:`~sb_mamba.nnet.scan.selective_scan`).
    hist : torch.Tensor, optional
        [B, K - 1, Di], the convolution's last ``K - 1`` inputs before
        ``xz`` (zeros by default); overwritten with the last ones of ``xz``.
    state : torch.Tensor, optional
        [B, S, Di] float32, the scan's state before ``xz`` (zeros by
        default); overwritten with the final state. With ``hist`` and
        ``state`` a sequence mixed in pieces gives the whole sequence's
        output (streaming; not with ``reverse``).

    Returns
    -------
    torch.Tensor
        [B, L, Di], the input of ``out_proj``.

    Example
    -------
    >>> Di, R, S = 8, 1, 2
    >>> params = [torch.randn(Di, 1, 4), None, torch.randn(R + 2 * S, Di),
    ...           torch.randn(Di, R), torch.randn(Di), torch.randn(Di, S), torch.ones(Di)]
    >>> xz = torch.randn(1, 5, 2 * Di)
    >>> y = mamba_inner_ref(xz, *params)
    >>> hist, state = torch.zeros(1, 3, Di), torch.zeros(1, S, Di)
    >>> parts = [mamba_inner_ref(xz[:, a:b], *params, hist=hist, state=state)
    ...          for a, b in ((0, 2), (2, 5))]
    >>> torch.allclose(torch.cat(parts, 1), y, atol=1e-5)
    True
    >>> y.shape  # [B, L, Di]
    torch.Size([1, 5, 8])
    """
    if hist is not None or state is not None:
        if reverse:
            raise ValueError(
                "mamba_inner_ref: hist/state continue a sequence forward in "
                "time; they do not go with reverse=True."
            )
        return _inner_ref_continued(
            xz,
            conv_weight,
            conv_bias,
            x_proj_weight,
            dt_proj_weight,
            dt_proj_bias,
            A_log,
            D,
            backend,
            hist,
            state,
        )
    if reverse:
        return mamba_inner_ref(
            xz.flip(1),
            conv_weight,
            conv_bias,
            x_proj_weight,
            dt_proj_weight,
            dt_proj_bias,
            A_log,
            D,
            backend=backend,
        ).flip(1)
    R, S = dt_proj_weight.shape[1], A_log.shape[1]
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # [B, Di, L] each
    x = F.silu(causal_depthwise_conv1d(x, conv_weight, conv_bias))
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # [B, L, R + 2S]
    dt, B, C = torch.split(x_dbl, [R, S, S], dim=-1)
    dt = (dt @ dt_proj_weight.t()).transpose(1, 2)  # [B, Di, L]
    y = selective_scan(
        x,
        dt,
        -torch.exp(A_log.float()),  # [Di, S]
        B.transpose(1, 2),  # [B, S, L]
        C.transpose(1, 2),
        D.float(),
        z=z,
        delta_bias=dt_proj_bias.float(),
        delta_softplus=True,
        backend=backend,
    )  # [B, Di, L]
    return y.transpose(1, 2)


def _inner_ref_continued(
    xz,
    conv_weight,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    dt_proj_bias,
    A_log,
    D,
    backend,
    hist,
    state,
):
    """:func:`mamba_inner_ref` continuing from ``hist`` / ``state`` (updated in place)."""
    R, S, K = dt_proj_weight.shape[1], A_log.shape[1], conv_weight.shape[-1]
    Bn, L, Di = xz.shape[0], xz.shape[1], xz.shape[2] // 2
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # [B, Di, L] each
    if hist is None:
        hist = x.new_zeros(Bn, K - 1, Di)
    xp = torch.cat([hist.transpose(1, 2).to(x.dtype), x], dim=-1)  # [B, Di, K - 1 + L]
    if K > 1:
        hist.copy_(xp[..., L:].transpose(1, 2))  # the last K - 1 inputs
    x = F.silu(causal_depthwise_conv1d(xp, conv_weight, conv_bias)[..., K - 1 :])
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # [B, L, R + 2S]
    dt, B, C = torch.split(x_dbl, [R, S, S], dim=-1)
    dt = (dt @ dt_proj_weight.t()).transpose(1, 2)  # [B, Di, L]
    x0 = None if state is None else state.transpose(1, 2)  # [B, Di, S]
    y, last = selective_scan(
        x,
        dt,
        -torch.exp(A_log.float()),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D.float(),
        z=z,
        delta_bias=dt_proj_bias.float(),
        delta_softplus=True,
        return_last_state=True,
        backend=backend,
        initial_state=x0,
    )  # [B, Di, L], [B, Di, S]
    if state is not None:
        state.copy_(last.transpose(1, 2))
    return y.transpose(1, 2)


def _kernels():
    """The compiled kernels, or a clear error when they were not built."""
    kernels = load_cpu_kernel()
    if kernels is None:
        raise RuntimeError(
            "The fused CPU kernels are not available (see "
            "load_cpu_kernel's warning): use mamba_inner_ref."
        )
    return kernels


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
    """Mamba's inner path on the fused CPU kernels, [B, L, 2Di] -> [B, L, Di].

    Takes float32 CPU tensors and needs the compiled kernels
    (``load_cpu_kernel()`` is not None); :func:`mamba_inner_ref` runs
    everywhere else.

    Arguments
    ---------
    xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D
        As in :func:`mamba_inner_ref`.
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
    >>> from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
    >>> if load_cpu_kernel() is None:  # not built: nothing to show
    ...     import pytest; pytest.skip("the fused CPU kernels are not available")
    >>> g = torch.Generator().manual_seed(0)
    >>> Di, R, S = 32, 2, 4
    >>> xz = torch.randn(2, 50, 2 * Di, generator=g)
    >>> shapes = [(Di, 1, 4), (Di,), (R + 2 * S, Di), (Di, R), (Di,), (Di, S), (Di,)]
    >>> params = [0.3 * torch.randn(s, generator=g) for s in shapes]
    >>> y = mamba_inner_cpu(xz, *params)
    >>> torch.allclose(y, mamba_inner_ref(xz, *params), rtol=1e-4, atol=1e-5)
    True
    >>> y.shape
    torch.Size([2, 50, 32])
    """
    params = (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xz,) + params):
        return _MambaInnerFn.apply(xz, *params, reverse)
    with torch.no_grad():
        return _inner_inference(xz, *params, reverse, inplace)


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
    hist=None,
    state=None,
):
    """A whole Mamba mixer on the fused CPU kernels without autograd, [B, L, N] -> [B, L, N].

    ``out_proj(mamba_inner_cpu(in_proj(hidden_states)))``, computed over
    segments of ``segment`` time steps that carry the convolution's last
    inputs and the scan's state from one segment to the next: the working
    memory is a few ``[B, segment, 2Di]`` buffers whatever the length.
    Float32 CPU tensors and the compiled kernels, as :func:`mamba_inner_cpu`.

    Arguments
    ---------
    hidden_states : torch.Tensor
        [B, L, N].
    in_proj_weight, in_proj_bias : torch.Tensor
        [2 * Di, N] and [2 * Di] (or None); or an int8
        :class:`~sb_mamba.nnet.int8.PackedLinear` and None.
    conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D
        As in :func:`mamba_inner_ref`.
    out_proj_weight, out_proj_bias : torch.Tensor
        [N_out, Di] and [N_out] (or None); or a ``PackedLinear`` and None.
    reverse : bool
        Run on the time-reversed sequence (output in the original order).
    segment : int, optional
        Time steps per segment; by default ``SEGMENT_BYTES`` of in_proj's
        output (at least 256 steps).
    hist : torch.Tensor, optional
        [B, K - 1, Di] contiguous, the convolution's last ``K - 1`` inputs
        before this sequence in processing order (zeros by default);
        overwritten with the sequence's own last ones.
    state : torch.Tensor, optional
        [B, S, Di] contiguous float32, the scan's state before the sequence
        (zeros by default); overwritten with the final state. With both, a
        stream mixed piece by piece gives the output of the whole stream.

    Returns
    -------
    torch.Tensor
        [B, L, N_out].

    Example
    -------
    >>> from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
    >>> if load_cpu_kernel() is None:  # not built: nothing to show
    ...     import pytest; pytest.skip("the fused CPU kernels are not available")
    >>> g = torch.Generator().manual_seed(0)
    >>> N, Di, R, S = 8, 16, 1, 4
    >>> shapes = [(2 * Di, N), (Di, 1, 4), (Di,), (R + 2 * S, Di), (Di, R), (Di,),
    ...           (Di, S), (Di,), (N, Di)]
    >>> w = [0.3 * torch.randn(s, generator=g) for s in shapes]
    >>> w = w[:1] + [None] + w[1:] + [None]  # no in_proj / out_proj bias
    >>> h = torch.randn(2, 100, N, generator=g)
    >>> y = mamba_mixer_inference_cpu(h, *w, segment=30)
    >>> ref = F.linear(mamba_inner_ref(F.linear(h, w[0]), *w[2:9]), w[9])
    >>> torch.allclose(y, ref, rtol=1e-4, atol=1e-5)
    True
    >>> hist, state = torch.zeros(2, 3, Di), torch.zeros(2, S, Di)  # a stream
    >>> parts = [mamba_mixer_inference_cpu(h[:, a:b], *w, hist=hist, state=state)
    ...          for a, b in ((0, 1), (1, 37), (37, 100))]
    >>> torch.allclose(torch.cat(parts, 1), y, rtol=1e-5, atol=1e-6)
    True
    >>> y.shape
    torch.Size([2, 100, 8])
    """
    k = _kernels()
    with torch.no_grad():
        B, L = hidden_states.shape[:2]
        Di, K = conv_weight.shape[0], conv_weight.shape[-1]
        w2 = conv_weight.reshape(Di, K).contiguous()
        A = -torch.exp(A_log)
        wdt, bdt, Dc = dt_proj_weight.contiguous(), dt_proj_bias.contiguous(), D.contiguous()
        out = hidden_states.new_empty(B, L, out_features(out_proj_weight))
        hist_out = hist
        if hist is None:
            hist = hidden_states.new_zeros(B, K - 1, Di)  # last inputs of the conv
        if state is None:
            state = hidden_states.new_zeros(B, A.shape[1], Di)  # the scan's state
        if segment is None:
            segment = max(256, SEGMENT_BYTES // (B * 2 * Di * 4))
        starts = list(range(0, L, segment))
        for t0 in reversed(starts) if reverse else starts:
            t1 = min(L, t0 + segment)
            xz = linear(hidden_states[:, t0:t1], in_proj_weight, in_proj_bias)
            x, z = xz[..., :Di], xz[..., Di:]
            if K > 1:  # the segment's last K - 1 inputs, in processing order
                last = x[:, : K - 1].flip(1) if reverse else x[:, -(K - 1) :]
                new_hist = torch.cat([hist, last], 1)[:, -(K - 1) :].contiguous()
            k.conv_silu_fwd(x, w2, conv_bias, x, reverse, hist)
            hist = new_hist if K > 1 else hist
            xdbl = F.linear(x, x_proj_weight).contiguous()
            # y over x (in place), or into a contiguous buffer for an int8
            # out_proj, which would otherwise copy the strided view
            y = x if isinstance(out_proj_weight, torch.Tensor) else x.new_empty(x.shape)
            k.mamba_scan_fwd(
                x, z, xdbl, wdt, bdt, A, Dc, y, reverse, FUSED_CHECKPOINT_STEPS, False, state
            )
            out[:, t0:t1] = linear(y, out_proj_weight, out_proj_bias)
        if hist_out is not None and hist_out is not hist:
            hist_out.copy_(hist)
        return out


def mamba_mixer_chunk_cpu(
    hidden_states,
    in_proj_weight,
    in_proj_bias,
    conv_weight2d,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    dt_proj_bias,
    A,
    D,
    out_proj_weight,
    out_proj_bias,
    hist,
    state,
):
    """The next frames of a stream through a Mamba mixer on the fused CPU kernels.

    :func:`mamba_mixer_inference_cpu` with ``hist`` and ``state``, lean for
    the few frames of a real-time chunk: one pass, the weights already in
    the kernels' layout (prepared once per stream by
    :meth:`~sb_mamba.nnet.mamba.Mamba.allocate_chunk_state`), no autograd.

    Arguments
    ---------
    hidden_states : torch.Tensor
        [B, L, N] float32, the next L >= 1 frames.
    in_proj_weight, in_proj_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, D,
    out_proj_weight, out_proj_bias : torch.Tensor
        As in :func:`mamba_mixer_inference_cpu` (contiguous; the projections
        may be int8 ``PackedLinear`` weights).
    conv_weight2d : torch.Tensor
        [Di, K] contiguous, the depthwise convolution's weight.
    conv_bias : torch.Tensor or None
        [Di].
    A : torch.Tensor
        [Di, S] contiguous, ``-exp(A_log)``.
    hist : torch.Tensor
        [B, K - 1, Di] contiguous, the convolution's last inputs; updated.
    state : torch.Tensor
        [B, S, Di] contiguous float32, the scan's state; updated.

    Returns
    -------
    torch.Tensor
        [B, L, N_out].

    Example
    -------
    >>> from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
    >>> if load_cpu_kernel() is None:  # not built: nothing to show
    ...     import pytest; pytest.skip("the fused CPU kernels are not available")
    >>> g = torch.Generator().manual_seed(0)
    >>> N, Di, R, S = 8, 16, 1, 4
    >>> shapes = [(2 * Di, N), (Di, 1, 4), (Di,), (R + 2 * S, Di), (Di, R), (Di,),
    ...           (Di, S), (Di,), (N, Di)]
    >>> w = [0.3 * torch.randn(s, generator=g) for s in shapes]
    >>> w = w[:1] + [None] + w[1:] + [None]  # no in_proj / out_proj bias
    >>> h = torch.randn(1, 50, N, generator=g)
    >>> y = mamba_mixer_inference_cpu(h, *w)
    >>> k = w[:2] + [w[2].reshape(Di, 4)] + w[3:7] + [-torch.exp(w[7])] + w[8:]
    >>> hist, state = torch.zeros(1, 3, Di), torch.zeros(1, S, Di)
    >>> parts = [mamba_mixer_chunk_cpu(h[:, a:b], *k, hist, state)
    ...          for a, b in ((0, 1), (1, 3), (3, 50))]
    >>> torch.allclose(torch.cat(parts, 1), y, rtol=1e-5, atol=1e-6)
    True
    """
    k = _kernels()
    L, Di, K = hidden_states.shape[1], conv_weight2d.shape[0], conv_weight2d.shape[1]
    xz = linear(hidden_states, in_proj_weight, in_proj_bias)  # [B, L, 2 Di]
    x, z = xz[..., :Di], xz[..., Di:]
    if K > 1:  # the next hist: the last K - 1 inputs, read before x is overwritten
        last = x[:, L - K + 1 :] if L >= K - 1 else torch.cat([hist, x], 1)[:, L:]
        last = last.clone(memory_format=torch.contiguous_format)
    k.conv_silu_fwd(x, conv_weight2d, conv_bias, x, False, hist)
    if K > 1:
        hist.copy_(last)
    xdbl = F.linear(x, x_proj_weight)  # [B, L, R + 2S]
    k.mamba_scan_fwd(
        x,
        z,
        xdbl,
        dt_proj_weight,
        dt_proj_bias,
        A,
        D,
        x,
        False,
        FUSED_CHECKPOINT_STEPS,
        False,
        state,
    )
    return linear(x, out_proj_weight, out_proj_bias)


def _inner_inference(
    xz,
    conv_weight,
    conv_bias,
    x_proj_weight,
    dt_proj_weight,
    dt_proj_bias,
    A_log,
    D,
    reverse,
    inplace,
):
    """No-autograd path: the conv output and then y overwrite x in ``xz``."""
    k = _kernels()
    if not inplace or xz.stride(-1) != 1:
        xz = xz.clone(memory_format=torch.contiguous_format)
    Di = xz.shape[-1] // 2
    x, z = xz[..., :Di], xz[..., Di:]
    k.conv_silu_fwd(x, conv_weight.reshape(Di, -1).contiguous(), conv_bias, x, reverse)
    xdbl = F.linear(x, x_proj_weight).contiguous()  # [B, L, R + 2S]
    A = -torch.exp(A_log)
    k.mamba_scan_fwd(
        x,
        z,
        xdbl,
        dt_proj_weight.contiguous(),
        dt_proj_bias.contiguous(),
        A,
        D.contiguous(),
        x,
        reverse,
        FUSED_CHECKPOINT_STEPS,
        False,
    )
    return x


class _MambaInnerFn(torch.autograd.Function):
    """Autograd wrapper of the fused kernels (see :func:`mamba_inner_cpu`)."""

    @staticmethod
    def forward(
        ctx,
        xz,
        conv_weight,
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        dt_proj_bias,
        A_log,
        D,
        reverse,
    ):
        """Conv + SiLU, x_proj, fused scan; stores the scan's checkpoints."""
        k = _kernels()
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
            xc, xz[..., Di:], xdbl, wdt, bdt, A, Dc, y, reverse, FUSED_CHECKPOINT_STEPS, True
        )
        ctx.save_for_backward(xz, xc, xdbl, ckpt, w2, conv_bias, x_proj_weight, wdt, bdt, A, Dc)
        ctx.reverse, ctx.conv_shape = reverse, conv_weight.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        """Fused scan backward, x_proj's products, conv + SiLU backward."""
        k = _kernels()
        xz, xc, xdbl, ckpt, w2, cb, wx, wdt, bdt, A, Dc = ctx.saved_tensors
        B, L, Di = xc.shape
        gxz = torch.empty_like(xz)
        gx, gz = gxz[..., :Di], gxz[..., Di:]
        gxdbl = torch.empty_like(xdbl)
        g_wdt, g_bdt, gA, gD = k.mamba_scan_bwd(
            xc,
            xz[..., Di:],
            xdbl,
            wdt,
            bdt,
            A,
            Dc,
            ckpt,
            gy.contiguous(),
            gx,
            gz,
            gxdbl,
            ctx.reverse,
            FUSED_CHECKPOINT_STEPS,
        )
        gxdbl2 = gxdbl.view(B * L, -1)
        gx.view(B * L, Di).addmm_(gxdbl2, wx)  # + the path through x_proj
        g_wx = gxdbl2.t() @ xc.view(B * L, Di)
        g_w, g_cb = k.conv_silu_bwd(xz[..., :Di], w2, cb, gx, ctx.reverse)
        return (
            gxz,
            g_w.view(ctx.conv_shape),
            g_cb if cb is not None else None,
            g_wx,
            g_wdt,
            g_bdt,
            gA * A,
            gD,
            None,
        )
