"""Tests for the fused C++ CPU selective-scan kernel.

The kernel's ``scan_fwd`` / ``scan_bwd`` (float32) are compared with a plain
sequential float64 PyTorch implementation of the same recurrence, whose
gradients come from autograd.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

from sb_mamba.nnet._cpu_kernel import load_cpu_kernel

kernel = load_cpu_kernel()
if kernel is None:
    pytest.skip(
        "the sb_mamba CPU scan kernel could not be built (no C++ compiler or "
        "ninja, or SB_MAMBA_NO_CPU_KERNEL is set)",
        allow_module_level=True,
    )


def reference_scan(u, delta, A, Bt, Ct):
    """Sequential selective scan, the definition the kernel implements.

    Arguments
    ---------
    u, delta : torch.Tensor
        Input and step size, (b, d, L).
    A : torch.Tensor
        State matrix diagonal, (d, N).
    Bt, Ct : torch.Tensor
        Input and output matrices, (b, G, L, N); channel ``i`` uses group
        ``i // (d // G)``.

    Returns
    -------
    y : torch.Tensor
        Output, (b, d, L).
    last_state : torch.Tensor
        State after the last step, (b, d, N).
    """
    b, d, L = u.shape
    G = Bt.shape[1]
    group = torch.arange(d) // (d // G)
    B, C = Bt[:, group], Ct[:, group]  # (b, d, L, N)
    x = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]
        x = torch.exp(dt * A) * x + dt * B[:, :, t] * u[:, :, t, None]
        ys.append((x * C[:, :, t]).sum(-1))
    return torch.stack(ys, dim=-1), x


def make_inputs(b, d, N, L, G, seed=0):
    """Random float64 inputs in the ranges Mamba uses (requires_grad set).

    Arguments
    ---------
    b, d, N, L, G : int
        Batch, channels, state size, length and number of B/C groups.
    seed : int
        Random seed.

    Returns
    -------
    list of torch.Tensor
        ``[u, delta, A, Bt, Ct, gy]``; ``gy`` is the output gradient.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u = randn(b, d, L)
    delta = torch.nn.functional.softplus(randn(b, d, L) - 1.0)
    A = -torch.exp(randn(d, N))
    Bt, Ct = randn(b, G, L, N), randn(b, G, L, N)
    gy = randn(b, d, L)
    return [t.requires_grad_() for t in (u, delta, A, Bt, Ct)] + [gy]


def as_f32(t):
    """Detached contiguous float32 copy."""
    return t.detach().float().contiguous()


@pytest.mark.parametrize(
    "b, d, N, L, G, chunk",
    [
        (2, 6, 4, 37, 1, 8),  # L not a multiple of chunk
        (2, 6, 4, 37, 2, 8),  # two groups of B/C
        (2, 6, 4, 5, 1, 8),  # L < chunk
        (1, 4, 16, 40, 1, 16),  # N = 16 (compile-time specialised path)
        (3, 8, 5, 20, 4, 1),  # chunk = 1, odd N
    ],
)
def test_kernel_matches_reference(b, d, N, L, G, chunk):
    """Forward, checkpoints and all gradients match the float64 reference."""
    u, delta, A, Bt, Ct, gy = make_inputs(b, d, N, L, G)
    y_ref, last_ref = reference_scan(u, delta, A, Bt, Ct)
    grads_ref = torch.autograd.grad((y_ref * gy).sum(), [u, delta, A, Bt, Ct])

    args = [as_f32(t) for t in (u, delta, A, Bt, Ct)]
    y, ckpt = kernel.scan_fwd(*args, chunk)
    n_chunks = -(-L // chunk)
    assert y.shape == (b, d, L) and y.dtype == torch.float32
    assert ckpt.shape == (b, d, n_chunks + 1, N)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref.detach(), **tol)
    torch.testing.assert_close(ckpt[:, :, -1].double(), last_ref.detach(), **tol)
    assert torch.all(ckpt[:, :, 0] == 0)

    grads = kernel.scan_bwd(*args, ckpt, as_f32(gy), chunk)
    names = ["du", "ddelta", "dA", "dBt", "dCt"]
    for name, g, g_ref, x in zip(names, grads, grads_ref, args):
        assert g.shape == x.shape and g.dtype == torch.float32, name
        torch.testing.assert_close(
            g.double(), g_ref, **tol, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_intermediate_checkpoints():
    """ckpt[:, :, k] is the state before chunk k (= last state of a prefix)."""
    u, delta, A, Bt, Ct, _ = make_inputs(1, 3, 4, 20, 1)
    args = [as_f32(t) for t in (u, delta, A, Bt, Ct)]
    _, ckpt = kernel.scan_fwd(*args, 8)
    for k, end in enumerate([0, 8, 16, 20]):
        if end == 0:
            continue
        prefix = [t[..., :end] for t in (u, delta)] + [A]
        prefix += [t[:, :, :end] for t in (Bt, Ct)]
        _, last = reference_scan(*prefix)
        torch.testing.assert_close(
            ckpt[:, :, k].double(), last.detach(), rtol=1e-4, atol=1e-5
        )


def test_nan_propagates():
    """A NaN in u reaches y from that step on (no fast-math)."""
    u, delta, A, Bt, Ct, _ = make_inputs(1, 2, 4, 10, 1)
    args = [as_f32(t) for t in (u, delta, A, Bt, Ct)]
    args[0][0, 1, 3] = float("nan")
    y, ckpt = kernel.scan_fwd(*args, 4)
    assert torch.isnan(y[0, 1, 3:]).all()
    assert not torch.isnan(y[0, 1, :3]).any()
    assert not torch.isnan(y[0, 0]).any()
    assert torch.isnan(ckpt[0, 1, -1]).all()


def test_nan_in_delta_propagates():
    """A NaN step size reaches y too (it goes through the vectorised exp)."""
    u, delta, A, Bt, Ct, _ = make_inputs(1, 2, 4, 10, 1)
    args = [as_f32(t) for t in (u, delta, A, Bt, Ct)]
    args[1][0, 0, 5] = float("nan")
    y, _ = kernel.scan_fwd(*args, 4)
    assert torch.isnan(y[0, 0, 5:]).all()
    assert not torch.isnan(y[0, 1]).any()


def test_large_negative_exponent_gives_zero_decay():
    """exp(delta * A) for very negative arguments is 0, not garbage."""
    d, N, L = 2, 4, 6
    u = torch.ones(1, d, L)
    delta = torch.full((1, d, L), 100.0)
    A = torch.full((d, N), -1e4)  # delta * A = -1e6: the state is reset
    Bt, Ct = torch.ones(1, 1, L, N), torch.ones(1, 1, L, N)
    y, _ = kernel.scan_fwd(u, delta, A, Bt, Ct, 4)
    torch.testing.assert_close(y, torch.full_like(y, 100.0 * N))


def test_bad_inputs_raise():
    """Wrong dtype, layout or shapes give a clear error."""
    u, delta, A, Bt, Ct, _ = make_inputs(1, 4, 4, 8, 1)
    args = [as_f32(t) for t in (u, delta, A, Bt, Ct)]
    with pytest.raises(RuntimeError, match="float32"):
        kernel.scan_fwd(args[0].double(), *args[1:], 4)
    with pytest.raises(RuntimeError, match="contiguous"):
        u_nc = args[0].transpose(1, 2).contiguous().transpose(1, 2)
        kernel.scan_fwd(u_nc, *args[1:], 4)
    with pytest.raises(RuntimeError, match="must divide"):
        bad = torch.zeros(1, 3, 8, 4)
        kernel.scan_fwd(*args[:3], bad, bad, 4)
    with pytest.raises(RuntimeError, match="chunk"):
        kernel.scan_fwd(*args, 0)
    y, ckpt = kernel.scan_fwd(*args, 4)
    with pytest.raises(RuntimeError, match="ckpt"):
        kernel.scan_bwd(*args, ckpt, torch.ones_like(y), 3)


def test_load_is_cached():
    """load_cpu_kernel() returns the same module on every call."""
    assert load_cpu_kernel() is kernel
