"""Tests for the fused C++ CPU selective-scan kernel.

The kernel's ``scan_fwd`` / ``scan_bwd`` (float32) are compared with a plain
sequential float64 PyTorch implementation of the same recurrence, whose
gradients come from autograd.

Authors
-------
 * sb_mamba developers
"""

import logging
import os

import pytest
import torch

from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
from tests.helpers import LENGTHS, make_scan_inputs, rand64

kernel = load_cpu_kernel()
if kernel is None:
    if not os.environ.get("SB_MAMBA_NO_CPU_KERNEL"):  # a build failure must not pass as a skip
        raise RuntimeError(
            "the sb_mamba CPU scan kernel could not be built (needs a C++ "
            "compiler and ninja); set SB_MAMBA_NO_CPU_KERNEL=1 to test without it"
        )
    pytest.skip("SB_MAMBA_NO_CPU_KERNEL is set", allow_module_level=True)


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
        torch.testing.assert_close(g.double(), g_ref, **tol, msg=lambda m, n=name: f"{n}: {m}")


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
        torch.testing.assert_close(ckpt[:, :, k].double(), last.detach(), rtol=1e-4, atol=1e-5)


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


# ---------------------------------------------------------------------------
# Fused Mamba kernels (time-major layout): conv_silu_* and mamba_scan_*.
# ---------------------------------------------------------------------------


def reference_conv_silu(x, w, b, reverse):
    """silu(causal depthwise conv) in float64 with autograd, (B, L, D)."""
    if reverse:
        return reference_conv_silu(x.flip(1), w, b, False).flip(1)
    D, K = w.shape
    L = x.shape[1]
    s = torch.nn.functional.conv1d(x.transpose(1, 2), w[:, None], b, padding=K - 1, groups=D)[
        ..., :L
    ]
    return torch.nn.functional.silu(s).transpose(1, 2)


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("D, K", [(32, 4), (20, 3)])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_silu_matches_reference(L, D, K, use_bias, reverse):
    """Forward (also in place, on a channel slice) and dx, dw, dbias."""
    gen = torch.Generator().manual_seed(L + D)
    xz = rand64(2, L, 2 * D, gen=gen).requires_grad_()
    w = rand64(D, K, gen=gen, scale=0.5).requires_grad_()
    b = rand64(D, gen=gen).requires_grad_() if use_bias else None
    gy = rand64(2, L, D, gen=gen)
    ref = reference_conv_silu(xz[..., :D], w, b, reverse)
    params = [xz, w] + ([b] if use_bias else [])
    g_ref = torch.autograd.grad((ref * gy).sum(), params)

    x32 = xz.detach().float()
    w32 = w.detach().float().contiguous()
    b32 = b.detach().float() if use_bias else None
    out = torch.empty(2, L, D)
    kernel.conv_silu_fwd(x32[..., :D], w32, b32, out, reverse)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    inplace = x32.clone()
    kernel.conv_silu_fwd(inplace[..., :D], w32, b32, inplace[..., :D], reverse)
    torch.testing.assert_close(inplace[..., :D], out, rtol=0, atol=0)
    assert torch.equal(inplace[..., D:], x32[..., D:])  # z untouched

    g = torch.zeros(2, L, 2 * D)
    g[..., :D] = gy.float()
    gw, gb = kernel.conv_silu_bwd(x32[..., :D], w32, b32, g[..., :D], reverse)
    assert torch.all(g[..., D:] == 0)
    torch.testing.assert_close(g[..., :D].double(), g_ref[0][..., :D], **tol)
    torch.testing.assert_close(gw.double(), g_ref[1], rtol=1e-4, atol=1e-4)
    if use_bias:
        torch.testing.assert_close(gb.double(), g_ref[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_silu_continues_from_history(reverse):
    """Two segments with the K - 1 carried input rows equal one pass."""
    gen = torch.Generator().manual_seed(0)
    x = rand64(2, 50, 16, gen=gen).float()
    w, b = rand64(16, 4, gen=gen).float(), rand64(16, gen=gen).float()
    full = torch.empty_like(x)
    kernel.conv_silu_fwd(x, w, b, full, reverse)
    first, second = (x[:, 20:], x[:, :20]) if reverse else (x[:, :20], x[:, 20:])
    hist = (first[:, :3].flip(1) if reverse else first[:, -3:]).contiguous()
    out2 = torch.empty_like(second)
    kernel.conv_silu_fwd(second, w, b, out2, reverse, hist)
    torch.testing.assert_close(out2, full[:, :20] if reverse else full[:, 20:])


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_scan_in_place_and_in_segments(reverse):
    """y may overwrite u; a carried state splits the sequence exactly."""
    xz, xdbl, w_dt, dt_bias, A, D, _ = make_scan_inputs(2, 90, 16, 16, 1)
    xz, xdbl, w_dt, dt_bias, A, D = [as_f32(t) for t in (xz, xdbl, w_dt, dt_bias, A, D)]
    u, z = xz[..., :16], xz[..., 16:]
    full = torch.empty(2, 90, 16)
    kernel.mamba_scan_fwd(u, z, xdbl, w_dt, dt_bias, A, D, full, reverse, 64, False)
    inplace = xz.clone()
    kernel.mamba_scan_fwd(
        inplace[..., :16],
        z,
        xdbl,
        w_dt,
        dt_bias,
        A,
        D,
        inplace[..., :16],
        reverse,
        64,
        False,
    )
    torch.testing.assert_close(inplace[..., :16], full, rtol=0, atol=0)

    state = torch.zeros(2, 16, 16)
    parts = [slice(50, 90), slice(0, 50)] if reverse else [slice(0, 50), slice(50, 90)]
    out = torch.empty(2, 90, 16)
    for sl in parts:
        y = torch.empty(2, sl.stop - sl.start, 16)
        kernel.mamba_scan_fwd(
            u[:, sl],
            z[:, sl],
            xdbl[:, sl].contiguous(),
            w_dt,
            dt_bias,
            A,
            D,
            y,
            reverse,
            64,
            False,
            state,
        )
        out[:, sl] = y
    torch.testing.assert_close(out, full, rtol=1e-6, atol=1e-6)


def test_mamba_scan_nan_propagates():
    """A NaN input reaches the later outputs of its channel only."""
    xz, xdbl, w_dt, dt_bias, A, D, _ = make_scan_inputs(1, 20, 16, 4, 1)
    xz, xdbl, w_dt, dt_bias, A, D = [as_f32(t) for t in (xz, xdbl, w_dt, dt_bias, A, D)]
    xz[0, 5, 3] = float("nan")
    y = torch.empty(1, 20, 16)
    kernel.mamba_scan_fwd(
        xz[..., :16], xz[..., 16:], xdbl, w_dt, dt_bias, A, D, y, False, 64, False
    )
    assert torch.isnan(y[0, 5:, 3]).all()
    assert not torch.isnan(y[0, :5]).any() and not torch.isnan(y[0, :, 4]).any()


def test_mamba_scan_bad_inputs_raise():
    """Wrong shapes, layouts or chunk give a clear error."""
    xz, xdbl, w_dt, dt_bias, A, D, _ = make_scan_inputs(1, 8, 16, 4, 1)
    xz, xdbl, w_dt, dt_bias, A, D = [as_f32(t) for t in (xz, xdbl, w_dt, dt_bias, A, D)]
    u, z, y = xz[..., :16], xz[..., 16:], torch.empty(1, 8, 16)
    with pytest.raises(RuntimeError, match="xdbl"):
        kernel.mamba_scan_fwd(u, z, xdbl[..., :-1], w_dt, dt_bias, A, D, y, False, 4, True)
    with pytest.raises(RuntimeError, match="contiguous channels"):
        kernel.mamba_scan_fwd(
            u.transpose(1, 2).contiguous().transpose(1, 2),
            z,
            xdbl,
            w_dt,
            dt_bias,
            A,
            D,
            y,
            False,
            4,
            True,
        )
    with pytest.raises(RuntimeError, match="chunk"):
        kernel.mamba_scan_fwd(u, z, xdbl, w_dt, dt_bias, A, D, y, False, 0, True)
    ckpt = kernel.mamba_scan_fwd(u, z, xdbl, w_dt, dt_bias, A, D, y, False, 4, True)
    with pytest.raises(RuntimeError, match="ckpt"):
        kernel.mamba_scan_bwd(
            u,
            z,
            xdbl,
            w_dt,
            dt_bias,
            A,
            D,
            ckpt,
            y,
            y.clone(),
            y.clone(),
            torch.empty_like(xdbl),
            False,
            3,
        )
    with pytest.raises(RuntimeError, match="hist"):
        kernel.conv_silu_fwd(u, torch.ones(16, 4), None, y, False, torch.zeros(1, 2, 16))


@pytest.mark.parametrize("B", [1, 3])
def test_fused_kernels_agree_across_thread_counts(B):
    """Blocks of one batch item split between threads (partial sums of
    d[dt_low | B | C] and of the conv's weight gradient) give the same result."""
    xz, xdbl, w_dt, dt_bias, A, D, gy = make_scan_inputs(B, 300, 64, 16, 4)
    xz, xdbl, w_dt, dt_bias, A, D, gy = [as_f32(t) for t in (xz, xdbl, w_dt, dt_bias, A, D, gy)]
    u, z = xz[..., :64], xz[..., 64:]
    w = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def run():
        y = torch.empty(B, 300, 64)
        ckpt = kernel.mamba_scan_fwd(u, z, xdbl, w_dt, dt_bias, A, D, y, False, 64, True)
        gu, gz, gx = torch.empty_like(y), torch.empty_like(y), torch.empty_like(xdbl)
        grads = kernel.mamba_scan_bwd(
            u, z, xdbl, w_dt, dt_bias, A, D, ckpt, gy, gu, gz, gx, False, 64
        )
        gw, gb = kernel.conv_silu_bwd(u, w, None, gu, True)
        return [y, gu, gz, gx, gw, gb, *grads]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(three, one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# The build: one folder per environment, a message before compiling (no
# compilation here: torch's load is replaced).
# ---------------------------------------------------------------------------


def test_build_folder_is_a_pure_function_of_its_inputs():
    from sb_mamba.nnet._cpu_kernel import build_folder

    base = ("/root", "2.5.1+cpu@abc/cpython-311", "/envs/a", "0" * 64)
    folder = build_folder(*base)
    assert folder == build_folder(*base)
    assert folder.startswith("/root/sb_mamba/") and "-torch2.5.1_cpu-" in folder
    others = {
        build_folder(*base[:1], "2.6.0+cpu@def/cpython-311", *base[2:]),  # torch
        build_folder(*base[:1], "2.5.1+cpu@abc/cpython-312", *base[2:]),  # Python ABI
        build_folder(*base[:2], "/envs/b", base[3]),  # another venv or clone
        build_folder(*base[:3], "1" * 64),
    }  # edited sources
    assert len(others) == 4 and folder not in others


def test_source_hash_follows_contents_and_flags(tmp_path):
    from sb_mamba.nnet._cpu_kernel import source_hash

    a, b = tmp_path / "a.cpp", tmp_path / "b.h"
    a.write_text("int f();")
    b.write_text("#pragma once")
    first = source_hash([a, b], ["-O3"])
    assert first == source_hash([a, b], ["-O3"])
    assert first != source_hash([a, b], ["-O2"])
    a.write_text("int g();")
    assert first != source_hash([a, b], ["-O3"])
    # the same files in another tree (a second clone or a wheel used from this venv)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.cpp").write_text("int g();")
    (other / "b.h").write_text("#pragma once")
    assert source_hash([a, b], ["-O3"]) != source_hash([other / "a.cpp", other / "b.h"], ["-O3"])


def test_each_environment_has_its_own_build_folder(monkeypatch, tmp_path):
    import sys

    from sb_mamba.nnet import _cpu_kernel as ck

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = ck._build_directory()
    assert folder == ck.build_folder(
        str(tmp_path),
        ck._torch_build(),
        sys.prefix,
        ck.source_hash(ck._SOURCES + ck._HEADERS, ck._CFLAGS + ck._LDFLAGS),
    )
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    assert ck._build_directory() != folder


@pytest.fixture
def fake_load(monkeypatch, tmp_path, caplog):
    """torch's load replaced: records its arguments and the log so far, writes the .so."""
    from pathlib import Path

    import torch.utils.cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []

    def load(**kwargs):
        calls.append((kwargs, [r.getMessage() for r in caplog.records]))
        Path(kwargs["build_directory"], kwargs["name"] + ".so").write_bytes(b"")
        return "module"

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    caplog.set_level(logging.INFO, logger="sb_mamba")
    return calls


def test_compile_says_so_first_once_and_where(fake_load, caplog):
    from sb_mamba.nnet import _cpu_kernel as ck

    assert ck._compile() == "module"
    ((kwargs, before),) = fake_load
    assert kwargs["build_directory"] == ck._build_directory()
    (message,) = [m for m in before if "Compiling the sb_mamba CPU kernel" in m]
    assert "once for this environment" in message and "a minute or two" in message
    assert kwargs["build_directory"] in message
    record = next(r for r in caplog.records if "Compiling" in r.getMessage())
    assert record.levelno == logging.INFO and record.name.startswith("sb_mamba.")
    caplog.clear()
    assert ck._compile() == "module"  # built: loaded without the message
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_a_killed_build_never_wedges_the_next(fake_load, caplog, monkeypatch):
    import fcntl
    import threading

    from sb_mamba.nnet import _cpu_kernel as ck

    folder = ck._build_directory()
    os.makedirs(folder)
    # an older torch's lock file, left by a build that was killed: removed
    monkeypatch.setattr(ck, "_torch_lock_is_a_file", lambda: True)
    open(os.path.join(folder, "lock"), "w").close()
    ck._compile()
    assert not os.path.exists(os.path.join(folder, "lock"))
    assert any("left by a compilation that was killed" in r.getMessage() for r in caplog.records)
    # a live build of this environment is waited for, with a message
    with open(os.path.join(folder, "sb_mamba.lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=ck._compile)
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # waits while the other build holds the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert any("Waiting for another process" in r.getMessage() for r in caplog.records)
