"""Int8 projections for CPU inference: packed weights and the op that applies them.

A :class:`PackedLinear` holds a linear layer's weight quantized to int8 per
output channel (symmetric, one scale per row) and packed for PyTorch's int8
CPU GEMM (fbgemm on x86, qnnpack on ARM); calling it quantizes the input
per call (dynamic quantization: the input's own range, 8 bits, 7 on x86
where the AVX2 int8 product would otherwise saturate), multiplies in int8
with int32 accumulation and returns float32. :func:`linear` is what the ops
of :mod:`sb_mamba.nnet.fused` call: ``F.linear`` for a float weight, the
packed product for a :class:`PackedLinear`, so one op serves both
precisions. Only inference: a packed weight has no gradient.

Which layers are packed, and the checks of the machine, belong to
:mod:`sb_mamba.inference.precision`.

Authors
-------
 * sb_mamba developers
"""

import warnings

import torch
import torch.nn.functional as F


def int8_engine():
    """The int8 GEMM engine of this PyTorch build on this CPU, or None.

    Returns
    -------
    str or None
        ``"x86"`` / ``"fbgemm"`` (x86 CPUs) or ``"qnnpack"`` (ARM), as in
        ``torch.backends.quantized.supported_engines``.

    Example
    -------
    >>> int8_engine() in (None, "x86", "fbgemm", "qnnpack")
    True
    """
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return None  # a PyTorch without the quantized CPU ops
    engines = list(torch.backends.quantized.supported_engines)
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    return None


class PackedLinear:
    """A linear layer's weight (and bias) as packed int8, ``[..., in] -> [..., out]``.

    Arguments
    ---------
    weight : torch.Tensor
        [out, in] float weight.
    bias : torch.Tensor, optional
        [out].

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> w, b = 0.1 * torch.randn(64, 32, generator=g), torch.randn(64, generator=g)
    >>> lin = PackedLinear(w, b)
    >>> x = torch.randn(2, 50, 32, generator=g)
    >>> ref = F.linear(x, w, b)
    >>> bool((lin(x) - ref).norm() / ref.norm() < 0.02)
    True
    >>> lin(x).shape, lin.out_features
    (torch.Size([2, 50, 64]), 64)
    """

    def __init__(self, weight, bias=None):
        engine = int8_engine()
        if engine is None:
            raise RuntimeError("This PyTorch build has no int8 CPU engine (fbgemm or qnnpack).")
        torch.backends.quantized.engine = engine
        w = weight.detach().float().cpu().contiguous()
        self.out_features, self.in_features = w.shape
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # PyTorch deprecates qint8 tensors (the packed
            warnings.simplefilter("ignore", UserWarning)  # op's input); int8_engine checks
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        b = None if bias is None else bias.detach().float().cpu().contiguous()
        self._packed = torch.ops.quantized.linear_prepack(qw, b)
        # x86's AVX2 u8 x s8 product saturates in int16: 7-bit inputs there
        self._reduce_range = engine in ("x86", "fbgemm")

    def __call__(self, x):
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(
            x.reshape(-1, shape[-1]).contiguous(), self._packed, self._reduce_range
        )
        return y.reshape(*shape[:-1], self.out_features)


def linear(x, weight, bias=None):
    """``F.linear`` for a float weight, the int8 product for a :class:`PackedLinear`.

    Arguments
    ---------
    x : torch.Tensor
        [..., in].
    weight : torch.Tensor or PackedLinear
        [out, in], or packed (its bias inside: ``bias`` must then be None).
    bias : torch.Tensor, optional
        [out], with a float weight.

    Returns
    -------
    torch.Tensor
        [..., out].

    Example
    -------
    >>> w = torch.randn(8, 4)
    >>> linear(torch.randn(3, 4), w).shape
    torch.Size([3, 8])
    """
    if isinstance(weight, PackedLinear):
        if bias is not None:
            raise ValueError("A PackedLinear holds its own bias: pass bias=None.")
        return weight(x)
    return F.linear(x, weight, bias)


def out_features(weight):
    """Output features of a float [out, in] weight or a :class:`PackedLinear`.

    Example
    -------
    >>> out_features(torch.randn(8, 4))
    8
    """
    return weight.out_features if isinstance(weight, PackedLinear) else weight.shape[0]
