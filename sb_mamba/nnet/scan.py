"""Selective scan (the S6 recurrence of Mamba) with interchangeable backends.

The recurrence, per batch ``b``, channel ``d`` and state ``n``::

    delta = softplus(delta + delta_bias)            (each optional)
    x[t]  = exp(delta[t] * A[d, n]) * x[t-1] + delta[t] * B[n, t] * u[t]
    y[t]  = sum_n C[n, t] * x[t] + D[d] * u[t]
    y[t]  = y[t] * silu(z[t])                        (optional)

:func:`selective_scan` has the signature and shapes of mamba-ssm's
``selective_scan_fn`` and runs on one of four backends:

``"torch"``
    Pure PyTorch (:mod:`sb_mamba.nnet.scan_torch`). A custom
    :class:`torch.autograd.Function` whose backward is a reverse-time scan (no
    autograd through a Python loop). Works on any device.
``"cpu_kernel"``
    A fused C++ kernel for forward and backward (compiled once, cached on
    disk). It stores only checkpoints of the state (every
    ``SCAN_CHECKPOINT_STEPS`` steps), never a ``(batch, dim, L, N)`` tensor. Falls back to ``"torch"`` with one warning
    when it cannot be compiled.
``"cuda"``
    mamba-ssm's functions (its fused CUDA kernels), imported lazily, whatever
    the device of the tensors. A clear error with an install hint when
    mamba-ssm is missing.
``"auto"``
    ``"cuda"`` for CUDA tensors when mamba-ssm imports and its scan runs (tried
    once on a tiny input), else the fastest CPU path (``"cpu_kernel"`` when it
    compiles, else ``"torch"``). Resolved once per process.

In every CPU backend the state and the arithmetic are float32, whatever the
input dtype (bf16 / fp16 inputs are upcast and the output is cast back).

Authors
-------
 * sb_mamba developers
"""

import threading

import torch
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger

from sb_mamba.nnet.scan_torch import scan_bwd_torch, scan_fwd_torch

logger = get_logger(__name__)

BACKENDS = ("auto", "torch", "cpu_kernel", "cuda")
# Time steps between the state checkpoints that the cpu_kernel backend's
# forward stores for its backward pass.
SCAN_CHECKPOINT_STEPS = 256

_warned = set()
_warn_lock = threading.Lock()


def _warn_once(key, msg):
    """Log ``msg`` as a warning the first time ``key`` is seen."""
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(msg)


def cuda_scan_available():
    """Whether mamba-ssm's CUDA selective scan can be imported.

    Returns
    -------
    bool
        True when ``mamba_ssm.ops.selective_scan_interface`` imports.

    Example
    -------
    >>> isinstance(cuda_scan_available(), bool)
    True
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import (  # noqa: F401
            selective_scan_fn,
        )
    except Exception:  # ImportError, or a broken CUDA extension
        return False
    return True


def cuda_scan_works(device="cuda"):
    """Whether mamba-ssm's selective scan imports *and runs* on ``device``.

    mamba-ssm can import while its compiled kernels are missing or opt-in
    (recent versions), so ``auto`` runs the scan once on a tiny input before
    choosing it.

    Returns
    -------
    bool
    """
    if not cuda_scan_available():
        return False
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        u = torch.randn(1, 4, 8, device=device)
        y = selective_scan_fn(
            u,
            torch.rand_like(u),
            -torch.rand(4, 2, device=device),
            torch.randn(1, 2, 8, device=device),
            torch.randn(1, 2, 8, device=device),
        )
        return bool(torch.isfinite(y).all())
    except Exception as e:  # a missing or failing kernel
        logger.warning("mamba-ssm imports but its selective scan fails on %s: %s", device, e)
        return False


_resolved = {}  # (backend, device type) -> backend used: resolved once per process
_resolve_lock = threading.Lock()


def reset_backends():
    """Forget the resolved backends and mamba-ssm's functions (resolve again).

    Example
    -------
    >>> reset_backends()
    """
    with _resolve_lock:
        _resolved.clear()
        _ops.clear()


_ops = {}
OPS = {  # name -> (module, attribute): what mamba_ssm.Mamba runs on a GPU
    "mamba_inner_fn": ("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn"),
    "selective_scan_fn": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
    "selective_state_update": (
        "mamba_ssm.ops.triton.selective_state_update",
        "selective_state_update",
    ),
}


def mamba_ssm_ops():
    """mamba-ssm's (and causal-conv1d's) functions, None for each missing one.

    Imported once per process (:func:`reset_backends` forgets them). Each
    missing piece is announced once: without ``causal_conv1d_fn`` the
    mixer runs ``F.conv1d`` + ``selective_scan_fn`` instead of
    ``mamba_inner_fn``; without the step functions, :meth:`Mamba.step` runs
    its PyTorch code.

    Returns
    -------
    dict
        ``{name: function or None}`` for the names of :data:`OPS`.
    """
    if _ops:
        return _ops
    import importlib

    found = {}
    for name, (module, attr) in OPS.items():
        try:
            found[name] = getattr(importlib.import_module(module), attr)
        except Exception:  # ImportError, or a broken compiled extension
            found[name] = None
            _warn_once(
                f"ops-{name}",
                f"{module}.{attr} is not available: sb_mamba's "
                "cuda backend runs without it (slower); install "
                "`pip install 'sb_mamba[cuda]'` for the fused path.",
            )
    _ops.update(found)
    return _ops


def resolve_backend(backend, device):
    """Resolve a backend name to the one actually used on ``device``.

    The answer is computed once per process for each ``(backend, device
    type)`` and cached (:func:`reset_backends` forgets it): ``auto`` imports
    and probes mamba-ssm at most once, whatever the number of calls.

    Arguments
    ---------
    backend : str
        One of ``"auto"``, ``"torch"``, ``"cpu_kernel"``, ``"cuda"``.
    device : torch.device or str
        Device of the tensors to be scanned.

    Returns
    -------
    str
        ``"torch"``, ``"cpu_kernel"`` or ``"cuda"``.

    Example
    -------
    >>> resolve_backend("torch", "cpu")
    'torch'
    >>> resolve_backend("auto", "cpu") in ("torch", "cpu_kernel")
    True
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"Unknown ssm_backend {backend!r}: choose one of {BACKENDS} "
            "(a run option: --ssm_backend in recipes, --backend in sb-mamba)."
        )
    key = (backend, torch.device(device).type)
    impl = _resolved.get(key)
    if impl is None:
        with _resolve_lock:
            impl = _resolved.get(key)
            if impl is None:
                impl = _resolve(backend, torch.device(device))
                logger.info(
                    "ssm_backend %s -> %s on %s (decided once per process).", backend, impl, key[1]
                )
            _resolved[key] = impl
    return impl


def _resolve(backend, device):
    """The uncached resolution of :func:`resolve_backend`."""
    if backend == "torch":
        return "torch"
    if backend == "cuda":  # explicit: mamba-ssm's functions, whatever the device
        if not cuda_scan_available():
            raise ImportError(
                "ssm_backend='cuda' needs mamba-ssm's CUDA kernels, which "
                "could not be imported. Install them with "
                "`pip install 'sb_mamba[cuda]'` (mamba-ssm + causal-conv1d "
                "built for your torch/CUDA), or use ssm_backend='auto'."
            )
        return "cuda"
    if backend == "cpu_kernel":
        if device.type != "cpu":
            raise ValueError(
                "ssm_backend='cpu_kernel' runs on CPU tensors, got device "
                f"{device}. Use ssm_backend='auto' to pick the right one."
            )
        if _cpu_kernel() is None:
            _warn_once(
                "cpu_kernel->torch",
                "ssm_backend='cpu_kernel' is not available (see the message "
                "above); FALLING BACK to the pure-PyTorch scan, which is "
                "several times slower.",
            )
            return "torch"
        return "cpu_kernel"
    # auto
    if device.type == "cuda":
        if cuda_scan_works(device):
            return "cuda"
        _warn_once(
            "auto-cuda->torch",
            "mamba-ssm's CUDA kernels are not importable or do not run: FALLING "
            "BACK to the pure-PyTorch selective scan on the GPU (slow, memory "
            "hungry). Install them with `pip install 'sb_mamba[cuda]'`.",
        )
        return "torch"
    if device.type == "cpu" and _cpu_kernel() is not None:
        return "cpu_kernel"
    if device.type == "cpu":
        _warn_once(
            "auto-cpu->torch",
            "The sb_mamba C++ CPU scan kernel is not available: FALLING BACK "
            "to the pure-PyTorch selective scan (several times slower).",
        )
    return "torch"


def _cpu_kernel():
    """Return the compiled CPU kernel module, or None."""
    from sb_mamba.nnet._cpu_kernel import load_cpu_kernel

    return load_cpu_kernel()


def selective_scan(
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
    backend="auto",
    initial_state=None,
):
    """Selective scan with the interface of mamba-ssm's ``selective_scan_fn``.

    Arguments
    ---------
    u : torch.Tensor
        Input, (batch, dim, L).
    delta : torch.Tensor
        Step sizes, (batch, dim, L).
    A : torch.Tensor
        State matrix (diagonal), (dim, N), real.
    B : torch.Tensor
        Input matrix: (batch, N, L), (batch, G, N, L) with ``dim % G == 0``,
        or time-invariant (dim, N).
    C : torch.Tensor
        Output matrix, same shape options as ``B``.
    D : torch.Tensor, optional
        Skip connection, (dim,).
    z : torch.Tensor, optional
        Gate, (batch, dim, L); the output is multiplied by ``silu(z)``.
    delta_bias : torch.Tensor, optional
        Added to ``delta``, (dim,).
    delta_softplus : bool
        Apply softplus to ``delta`` (after the bias).
    return_last_state : bool
        Also return the final state, (batch, dim, N) float32 (no gradient).
    backend : str
        ``"auto"``, ``"torch"``, ``"cpu_kernel"`` or ``"cuda"``.
    initial_state : torch.Tensor, optional
        (batch, dim, N), the state before the first step (zeros by
        default), e.g. the ``last_state`` of the previous piece of a
        stream: pieces scanned one after the other give the whole scan.
        It receives no gradient. mamba-ssm's kernel takes none, so with
        it the ``cuda`` backend runs the ``torch`` scan.

    Returns
    -------
    out : torch.Tensor
        (batch, dim, L), with the dtype of ``u``.
    last_state : torch.Tensor
        Only when ``return_last_state``.

    Example
    -------
    >>> u, delta = torch.randn(2, 8, 50), torch.rand(2, 8, 50)
    >>> A = -torch.rand(8, 4)
    >>> B, C = torch.randn(2, 4, 50), torch.randn(2, 4, 50)
    >>> y = selective_scan(u, delta, A, B, C, backend="torch")
    >>> y.shape
    torch.Size([2, 8, 50])
    >>> y1, h = selective_scan(u[..., :20], delta[..., :20], A, B[..., :20], C[..., :20],
    ...                        return_last_state=True, backend="torch")
    >>> y2 = selective_scan(u[..., 20:], delta[..., 20:], A, B[..., 20:], C[..., 20:],
    ...                     initial_state=h, backend="torch")  # the stream goes on
    >>> torch.allclose(torch.cat([y1, y2], -1), y, atol=1e-5)
    True
    """
    if A.is_complex():
        raise ValueError(
            "sb_mamba's selective_scan supports real A only (as Mamba uses); got a complex A."
        )
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} "
            f"and {tuple(delta.shape)}."
        )
    impl = resolve_backend(backend, u.device)
    if impl == "cuda" and initial_state is not None:
        impl = "torch"  # mamba-ssm's selective_scan_fn takes no initial state
    if impl == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )

    in_dtype = u.dtype
    batch, dim, L = u.shape
    u32 = u.float()
    delta32 = delta.float()
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.float()[:, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    Bt = _time_major(B, batch, dim, L, "B")
    Ct = _time_major(C, batch, dim, L, "C")
    x0 = None
    if initial_state is not None:
        if initial_state.shape != (batch, dim, A.shape[1]):
            raise ValueError(
                f"initial_state must be (batch, dim, N) = {(batch, dim, A.shape[1])}, "
                f"got {tuple(initial_state.shape)}."
            )
        x0 = initial_state.detach().float().contiguous()
    y, last_state = _ScanCore.apply(u32, delta32, A.float(), Bt, Ct, impl, x0)
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(in_dtype)
    return (y, last_state) if return_last_state else y


def _time_major(M, batch, dim, L, name):
    """Bring B or C to the kernels' (batch, G, L, N) float32 layout."""
    if M.dim() == 2:  # time-invariant (dim, N): one group per channel
        if M.shape[0] != dim:
            raise ValueError(f"{name} of shape (dim, N) must have dim={dim}.")
        return M.float()[None, :, None, :].expand(batch, dim, L, M.shape[1])
    if M.dim() == 3:
        M = M.unsqueeze(1)
    if M.dim() != 4 or M.shape[0] != batch or M.shape[-1] != L:
        raise ValueError(
            f"{name} must be (batch, N, L) or (batch, G, N, L) with batch="
            f"{batch} and L={L}; got {tuple(M.shape)}."
        )
    if dim % M.shape[1] != 0:
        raise ValueError(f"dim={dim} is not divisible by {name}'s G={M.shape[1]}.")
    return M.float().transpose(-1, -2)


class _ScanCore(torch.autograd.Function):
    """y = C x over the recurrence x = exp(delta A) x + delta B u.

    Inputs are float32: u, delta (b, d, L); A (d, N); Bt, Ct (b, G, L, N);
    x0 (b, d, N) contiguous or None (zeros; it gets no gradient).
    Returns y (b, d, L) and the final state (b, d, N).
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct, impl, x0=None):
        """Run the scan forward with ``impl`` ('torch' or 'cpu_kernel')."""
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        Bt, Ct = Bt.contiguous(), Ct.contiguous()
        ctx.impl = impl
        if impl == "cpu_kernel":  # its first checkpoint is x0
            y, ckpt = _cpu_kernel().scan_fwd(u, delta, A, Bt, Ct, SCAN_CHECKPOINT_STEPS, x0)
            ctx.save_for_backward(u, delta, A, Bt, Ct, ckpt)
            return y, ckpt[:, :, -1]
        y, xs = scan_fwd_torch(u, delta, A, Bt, Ct, x0)
        ctx.save_for_backward(u, delta, A, Bt, Ct, xs, x0)
        return y, xs[-1]

    @staticmethod
    def backward(ctx, gy, _g_last):
        """Reverse-time scan for all input gradients."""
        u, delta, A, Bt, Ct, saved, *x0 = ctx.saved_tensors
        gy = gy.float().contiguous()
        if ctx.impl == "cpu_kernel":
            grads = _cpu_kernel().scan_bwd(u, delta, A, Bt, Ct, saved, gy, SCAN_CHECKPOINT_STEPS)
        else:
            grads = scan_bwd_torch(u, delta, A, Bt, Ct, saved, gy, *x0)
        return (*grads, None, None)
