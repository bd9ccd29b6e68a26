"""S4 layer: HiPPO-LegS NPLR form, kernels vs explicit unrolling, convolution,
causality, parameter layout of the S4M configuration, learning.

Authors
-------
 * sb_mamba developers
"""

import math

import pytest
import torch

from sb_mamba.nnet.s4 import S4, fft_conv
from sb_mamba.nnet.s4_kernel import S4Kernel, hippo_legs_nplr

# S4M.py (JusperLee/S4M) builds its SSM block as
#   S4(d_model=dim, d_state=16, bidirectional=True, dropout=0.0, transposed=True)
# with dim = in_channels = 512 (TDANetBlock(out_channels=128, in_channels=512)).
S4M_ARGS = dict(d_state=16, bidirectional=True, dropout=0.0, transposed=True)
# Shapes from the reference s4.py (JusperLee/S4M, a copy of the HazyResearch
# standalone S4): S4.D = randn(channels, H); SSKernel -> SSKernelNPLR with
# channels doubled by bidirectional and N = d_state // 2 conjugate pairs:
# C = view_as_real(randn(2, H, N)), log_dt (H,), B = view_as_real(B[None]),
# P = view_as_real((rank, H, N)), inv_w_real / w_imag (H, N); buffer L = tensor(0);
# output_linear = LinearActivation(H, 2H, transposed=True, activation="glu",
# activate=True) = Sequential(Conv1d(H, 2H, 1), GLU(dim=-2)).
S4M_PARAMS_D512 = {
    "D": (1, 512),
    "kernel.kernel.C": (2, 512, 8, 2),
    "kernel.kernel.log_dt": (512,),
    "kernel.kernel.B": (1, 512, 8, 2),
    "kernel.kernel.P": (1, 512, 8, 2),
    "kernel.kernel.inv_w_real": (512, 8),
    "kernel.kernel.w_imag": (512, 8),
    "output_linear.0.weight": (1024, 512, 1),
    "output_linear.0.bias": (1024,),
}
S4M_NUMEL_D512 = 567296
SSM_PARAMS = ("log_dt", "B", "P", "inv_w_real", "w_imag")


def _conj(x):
    return torch.cat([x, x.conj()], dim=-1)


def legs_matrix(N):
    """HiPPO-LegS A, B written element by element (Gu et al., HiPPO, eq. LegS)."""
    A = torch.zeros(N, N, dtype=torch.double)
    for n in range(N):
        for k in range(N):
            if n > k:
                A[n, k] = -math.sqrt((2 * n + 1) * (2 * k + 1))
            elif n == k:
                A[n, k] = -(n + 1)
    return A, torch.sqrt(2 * torch.arange(N, dtype=torch.double) + 1)


@pytest.mark.parametrize("N", [8, 16, 64])
def test_hippo_legs_nplr_reconstruction(N):
    w, P, B, V = hippo_legs_nplr(N, dtype=torch.double)
    A, B_legs = legs_matrix(N)
    Vf, wf, Pf, Bf = torch.cat([V, V.conj()], 1), _conj(w), _conj(P), _conj(B)
    assert torch.allclose(Vf.conj().T @ Vf, torch.eye(N, dtype=Vf.dtype), atol=1e-8)
    assert torch.allclose(w.real, torch.full_like(w.real, -0.5))
    # Original basis: A = V diag(w) V^* - p p^T with p_n = sqrt(n + 1/2).
    p = torch.sqrt(torch.arange(N, dtype=torch.double) + 0.5)
    A_rec = Vf @ torch.diag(wf) @ Vf.conj().T - torch.outer(p, p)
    assert (A_rec - A).abs().max() < 1e-4
    # Eigenbasis: A = V (diag(w) - P P^*) V^*, B = V B, P = V^* p.
    A_eig = torch.diag(wf) - Pf.T @ Pf.conj()
    assert (Vf @ A_eig @ Vf.conj().T - A).abs().max() < 1e-4
    assert (Vf @ Bf - B_legs).abs().max() < 1e-4
    assert (Vf @ Pf[0] - p).abs().max() < 1e-4


def _perturbed_kernel(mode, rank=1, dtype=torch.double, l_max=None, **kw):
    torch.manual_seed(0)
    kernel = S4Kernel(
        3, N=8, L=l_max, channels=2, rank=rank, mode=mode, dt_min=0.02, dt_max=0.3, **kw
    ).to(dtype)
    with torch.no_grad():  # move away from the init: a generic (D)PLR system
        for p in kernel.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return kernel


def dense_nplr_kernel(k, C, L):
    """K_l = C A_d^l B_d, from the dense full state matrix (bilinear), unrolled."""
    w = _conj(-torch.exp(k.inv_w_real) + 1j * k.w_imag).cdouble()  # (H, 2N)
    P = _conj(torch.view_as_complex(k.P)).cdouble()  # (R, H, 2N)
    B = _conj(torch.view_as_complex(k.B)[0]).cdouble()  # (H, 2N)
    C = _conj(C).cdouble()  # (c, H, 2N)
    dt = torch.exp(k.log_dt).double()[:, None, None]
    A = torch.diag_embed(w) - torch.einsum("rhm,rhn->hmn", P, P.conj())
    eye = torch.eye(A.size(-1), dtype=A.dtype)
    inv = torch.linalg.inv(eye - dt / 2 * A)
    dA, x = inv @ (eye + dt / 2 * A), (inv @ (dt * B[..., None]))[..., 0]
    out = []
    for _ in range(L):
        out.append(torch.einsum("chn,hn->ch", C, x))
        x = (dA @ x[..., None])[..., 0]
    K = torch.stack(out, -1)
    assert K.imag.abs().max() < 1e-8 * K.abs().max()  # conjugate pairs -> real
    return K.real


def _rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def _frozen(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(module, before):
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("L0", [32, 37])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.double, 1e-8), (torch.float, 1e-4)])
def test_nplr_kernel_matches_dense_unroll(rank, dtype, tol, L0):
    kernel = _perturbed_kernel("nplr", rank=rank, dtype=dtype)
    k = kernel.kernel
    C0 = torch.view_as_complex(k.C.detach().clone())
    before = _frozen(kernel)
    out = kernel(L=L0)
    assert out.shape == (2, 3, L0)
    assert _rel(out.detach(), dense_nplr_kernel(k, C0, L0)) < tol
    assert _rel(kernel(L=100).detach(), dense_nplr_kernel(k, C0, 100)) < tol  # longer
    assert _rel(kernel(L=20).detach(), dense_nplr_kernel(k, C0, 20)) < tol  # shorter
    # forward never writes to the parameters or buffers (C stays C, L stays 0)
    assert _unchanged(kernel, before) and k.L.item() == 0


def test_nplr_kernel_l_max():
    kernel = _perturbed_kernel("nplr", l_max=16)
    k = kernel.kernel
    C0 = torch.view_as_complex(k.C.detach().clone())
    before = _frozen(kernel)
    assert _rel(kernel(L=16).detach(), dense_nplr_kernel(k, C0, 16)) < 1e-8
    assert _rel(kernel(L=10).detach(), dense_nplr_kernel(k, C0, 10)) < 1e-8
    assert _rel(kernel(L=50).detach(), dense_nplr_kernel(k, C0, 50)) < 1e-8
    assert _unchanged(kernel, before)


def test_nplr_kernel_from_a_reference_checkpoint():
    """A reference-S4 state (C~ for length 16 in C, 16 in L) gives the SSM's kernel."""
    kernel = _perturbed_kernel("nplr")
    k = kernel.kernel
    C0 = torch.view_as_complex(k.C.detach().clone())
    state = kernel.state_dict()
    C_tilde, n = k.c_tilde(16)  # what the reference code writes into C after a forward
    assert n == 16
    state["kernel.C"], state["kernel.L"] = torch.view_as_real(C_tilde.detach()), torch.tensor(16)
    kernel.load_state_dict(state)
    before = _frozen(kernel)
    assert _rel(kernel(L=16).detach(), dense_nplr_kernel(k, C0, 16)) < 1e-8
    assert _rel(kernel(L=50).detach(), dense_nplr_kernel(k, C0, 50)) < 1e-8  # 16 -> 32 -> 64
    assert _unchanged(kernel, before) and k.L.item() == 16


def test_kernel_gradient_reaches_C():
    kernel = _perturbed_kernel("nplr")
    kernel(L=30).sum().backward()
    assert kernel.kernel.C.grad is not None and kernel.kernel.C.grad.abs().sum() > 0


@pytest.mark.parametrize("measure", ["diag-lin", "diag-inv"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_matches_unroll(measure, disc):
    kernel = _perturbed_kernel("diag", measure=measure, disc=disc)
    k = kernel.kernel
    A = (-torch.exp(k.inv_A_real) + 1j * k.A_imag).detach()
    B = torch.view_as_complex(k.B).detach()
    C = torch.view_as_complex(k.C).detach()
    dt = torch.exp(k.log_dt).detach()[:, None]
    if disc == "zoh":
        dA, dB = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A * B
    else:
        dA, dB = (1 + dt * A / 2) / (1 - dt * A / 2), dt * B / (1 - dt * A / 2)
    x, out = dB, []
    for _ in range(40):  # impulse response of x' = dA x + dB u, y = 2 Re(C x)
        out.append(2 * (C * x).sum(-1).real)
        x = dA * x
    assert _rel(kernel(L=40).detach(), torch.stack(out, -1)) < 1e-10


def direct_conv(u, k, D, bidirectional):
    """Time-domain convolution, y[b, c, h, t]."""
    Bsz, H, L = u.shape
    k0, k1 = k.chunk(2, 0) if bidirectional else (k, None)
    y = torch.zeros(Bsz, k0.size(0), H, L, dtype=u.dtype)
    for t in range(L):
        for s in range(min(t + 1, k0.size(-1))):
            y[..., t] += k0[..., s] * u[:, None, :, t - s]
        if bidirectional:
            for j in range(1, min(L - t, k1.size(-1) + 1)):
                y[..., t] += k1[..., j - 1] * u[:, None, :, t + j]
    return y + u[:, None] * D[..., None]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("Lk", [24, 10])
def test_fft_conv_matches_direct(bidirectional, Lk):
    torch.manual_seed(0)
    u = torch.randn(2, 3, 24, dtype=torch.double)
    k = torch.randn(4 if bidirectional else 2, 3, Lk, dtype=torch.double)
    D = torch.randn(2, 3, dtype=torch.double)
    y = fft_conv(u, k, D, bidirectional)
    assert torch.allclose(y, direct_conv(u, k, D, bidirectional), atol=1e-10)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_convolution_and_causality(bidirectional):
    torch.manual_seed(0)
    layer = S4(4, d_state=8, bidirectional=bidirectional, activation=None, postact=None).double()
    u = torch.randn(2, 4, 30, dtype=torch.double)
    y, state = layer(u)
    assert state is None and y.shape == u.shape
    k = layer.kernel(L=30).detach()
    ref = direct_conv(u, k, layer.D.detach(), bidirectional).flatten(1, 2)
    assert torch.allclose(y, layer.output_linear(ref), atol=1e-8)
    # Full layer (GELU + GLU): changing inputs after t0 must leave outputs
    # before t0 untouched iff causal.
    layer = S4(4, d_state=8, bidirectional=bidirectional)
    u = torch.randn(2, 4, 30)
    u2 = u.clone()
    u2[..., 15:] += torch.randn(2, 4, 15)
    diff = (layer(u)[0] - layer(u2)[0])[..., :15].abs().max()
    assert (diff > 1e-3) if bidirectional else (diff < 1e-5)


def test_layer_lengths_and_layouts():
    torch.manual_seed(0)
    layer = S4(8, d_state=16, bidirectional=True)
    u = torch.randn(2, 8, 37)
    y37 = layer(u)[0]
    assert layer(torch.randn(1, 8, 100))[0].shape == (1, 8, 100)
    assert layer.kernel.kernel.L.item() == 0  # nothing written by forward
    assert torch.allclose(layer(u)[0], y37, atol=1e-4)  # same kernel, re-derived
    # (B, L, H) layout with the same weights gives the same result.
    flat = S4(8, d_state=16, bidirectional=True, transposed=False)
    sd = layer.state_dict()
    sd["output_linear.0.weight"] = sd["output_linear.0.weight"][..., 0]
    flat.load_state_dict(sd)
    assert torch.allclose(flat(u.transpose(1, 2))[0].transpose(1, 2), y37, atol=1e-5)


def test_s4m_parameter_layout_and_optim_hints():
    layer = S4(512, **S4M_ARGS)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == S4M_PARAMS_D512
    assert sum(p.numel() for p in layer.parameters()) == S4M_NUMEL_D512
    assert [n for n, _ in layer.named_buffers()] == ["kernel.kernel.L"]
    for name, p in layer.named_parameters():
        expected = {"weight_decay": 0.0} if name.split(".")[-1] in SSM_PARAMS else None
        assert getattr(p, "_optim", None) == expected, name
    hinted = S4(8, d_state=16, lr={"dt": 1e-3, "A": 0.0})
    assert hinted.kernel.kernel.log_dt._optim == {"weight_decay": 0.0, "lr": 1e-3}
    assert {n for n, _ in hinted.named_buffers()} == {
        "kernel.kernel." + n for n in ("L", "P", "inv_w_real", "w_imag")
    }


@pytest.mark.parametrize("bidirectional", [True, False])
def test_s4_learns_moving_average(bidirectional):
    """One 1-D signal lifted to the 8 features; target: its moving average
    (centred if bidirectional, else causal), in every feature."""
    torch.manual_seed(0)
    layer = S4(8, d_state=16, bidirectional=bidirectional)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(16, 1, 64).expand(-1, 8, -1)
    pad = (2, 2) if bidirectional else (4, 0)
    target = torch.nn.functional.avg_pool1d(torch.nn.functional.pad(x, pad), 5, stride=1)
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and stall on a busy CPU)
    try:
        for _ in range(100):
            loss = ((layer(x)[0] - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
