"""SSM convolution kernels of the S4 layer (:mod:`sb_mamba.nnet.s4`), pure PyTorch.

NPLR kernel (full S4: HiPPO-LegS, bilinear transform, ``C~ = C (I - A_d^L)``,
Cauchy kernel + Woodbury) and diagonal S4D kernel (ZOH or bilinear,
Vandermonde). Parameter names, shapes and optimizer hints (``_optim``) follow
the reference ``s4.py`` of JusperLee/S4M (a copy of the HazyResearch
standalone S4), so state dicts line up.

Authors
-------
 * sb_mamba developers
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)


def _conj(x):
    """Completes the stored halves of the conjugate pairs (last dim)."""
    return torch.cat([x, x.conj()], dim=-1)


def hippo_legs_nplr(N, rank=1, dtype=torch.float):
    """Normal-plus-low-rank form of HiPPO-LegS, as the reference ``nplr("legs")``.

    LegS: ``A_nk = -sqrt((2n+1)(2k+1))`` (n > k), ``-(n+1)`` (n = k), 0 else;
    ``B_n = sqrt(2n+1)``. With ``p_n = sqrt(n+1/2)``, ``A + p p^T = -I/2 +
    skew = V_f diag(w_f) V_f^*``. The N/2 eigenpairs with negative imaginary
    part are kept (``x_f = [x, conj(x)]``): ``A = V_f (diag(w_f) - P_f P_f^*) V_f^*``.

    Arguments
    ---------
    N : int
        State size (even).
    rank : int
        Rows of P (extra rows are zero).
    dtype : torch.dtype
        torch.float (complex64 outputs) or torch.double (complex128).

    Returns
    -------
    w, P, B, V : torch.Tensor
        (N/2,) eigenvalues (real part -1/2), (rank, N/2) ``V^* p``,
        (N/2,) ``V^* B`` and (N, N/2) eigenvectors.

    Example
    -------
    >>> w, P, B, V = hippo_legs_nplr(16)
    >>> w.shape, P.shape, B.shape, V.shape
    (torch.Size([8]), torch.Size([1, 8]), torch.Size([8]), torch.Size([16, 8]))
    """
    if N % 2:
        raise ValueError("N must be even (conjugate pairs)")
    q = torch.arange(N, dtype=torch.double)
    r = torch.sqrt(2 * q + 1)
    A = -torch.tril(r[:, None] * r[None, :], -1) - torch.diag(q + 1)
    P = torch.zeros(rank, N, dtype=torch.double)
    P[0] = torch.sqrt(q + 0.5)
    AP = A + P.T @ P
    w_re = AP.diagonal().mean()
    w_im, V = torch.linalg.eigh(-1j * (AP - w_re * torch.eye(N)))  # Hermitian
    idx = torch.argsort(w_im)[: N // 2]
    w, V = w_re + 1j * w_im[idx], V[:, idx]
    if w.abs().min() < 1e-4:
        raise RuntimeError("zero eigenvalue in the HiPPO-LegS diagonalisation")
    cdtype = torch.cfloat if dtype == torch.float else torch.cdouble
    out = (w, P.to(V) @ V.conj(), V.conj().T @ r.to(V), V)
    return tuple(x.to(cdtype) for x in out)


def _s4d_init(measure, N, H, rank=1):
    """(w, P = 0, B = 1), (H, N/2) each, of S4D-Lin, S4D-Inv or S4D-LegS."""
    n = torch.arange(N // 2, dtype=torch.float).expand(H, -1)
    if measure == "diag-lin":
        imag = math.pi * n
    elif measure == "diag-inv":
        imag = N / math.pi * (N / (1 + 2 * n) - 1)
    elif measure == "diag-legs":
        imag = hippo_legs_nplr(N)[0].imag.expand(H, -1)
    else:
        raise ValueError(f"unknown S4D measure {measure!r}")
    w = -0.5 + 1j * imag
    return w, torch.zeros(rank, H, N // 2, dtype=torch.cfloat), torch.ones_like(w)


class _SSMModule(nn.Module):
    """Registration of SSM tensors with optimizer hints, as the reference."""

    def register(self, name, tensor, lr=None):
        """Buffer if lr == 0, else parameter with ``_optim`` = no weight decay
        (+ ``lr`` if given)."""
        if lr == 0.0:
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        getattr(self, name)._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": lr})}

    def _register_dt_B(self, log_dt, B, lr):
        """Registers log_dt and B; returns the lr hint of A."""
        lr_dict, lr = (lr, None) if isinstance(lr, dict) else ({}, lr)
        self.register("log_dt", log_dt, lr_dict.get("dt", lr))
        self.register("B", torch.view_as_real(B.clone()), lr_dict.get("B", lr))
        return lr_dict.get("A", lr)

    def _real_init(self, w_real, tol):
        x = -torch.clamp(w_real, max=-tol)
        return {
            "exp": torch.log,
            "none": lambda x: x,
            "softplus": lambda x: torch.log(torch.expm1(x)),
        }[self.real_type](x)

    def _real(self, x):
        return -{"exp": torch.exp, "none": lambda x: x, "softplus": F.softplus}[self.real_type](x)


def cauchy(v, z, w, b=None, chunk=None):
    """Conjugate-symmetric Cauchy kernel ``sum_n v_n / (z - b w_n)``.

    The sum runs over ``[v, conj(v)]`` and ``[w, conj(w)]``, in chunks of
    nodes (default: the (H, 2N, chunk) Cauchy matrix has < 2**22 entries).

    Arguments
    ---------
    v, z, w : torch.Tensor
        (M, H, N) numerators, (Lf,) nodes, (H, N) poles.
    b : torch.Tensor, optional
        (Lf,) per-node scale of the poles (default 1).
    chunk : int, optional
        Nodes per chunk.

    Returns
    -------
    torch.Tensor
        (M, H, Lf).

    Example
    -------
    >>> v, w = torch.ones(3, 2, 4, dtype=torch.cfloat), -torch.ones(2, 4) + 0j
    >>> cauchy(v, torch.zeros(5, dtype=torch.cfloat), w).shape
    torch.Size([3, 2, 5])
    """
    v, w = _conj(v).transpose(0, 1), _conj(w).unsqueeze(-1)  # (H,M,2N), (H,2N,1)
    b = torch.ones_like(z) if b is None else b
    chunk = chunk or max(1, 2**22 // w.numel())
    out = [v @ (1.0 / (zc - bc * w)) for zc, bc in zip(z.split(chunk), b.split(chunk))]
    return torch.cat(out, dim=-1).transpose(0, 1)


class SSMKernelNPLR(_SSMModule):
    """S4 kernel for ``A = diag(w) - P P^*`` with the bilinear transform.

    ``K_l = C A_d^l B_d`` (l < L) from the truncated generating function at
    the L-th roots of unity: parameter ``C`` holds ``C~ = C (I - A_d^L)``
    (set in place at first use, then ``C~ <- C~ (I + A_d^L)`` per length
    doubling, as the reference), then Cauchy sums, Woodbury, inverse FFT.

    Arguments
    ---------
    w, P, B, C : torch.Tensor
        (S, N), (R, S, N), (S, N), (channels, H, N) complex, half pairs; the
        S trainable (A, B) copies are tiled to H.
    log_dt : torch.Tensor
        (H,) log step sizes.
    l_max : int, optional
        Length set up at first use (None: the first call's length).
    lr : float or dict, optional
        Optimizer hint of (A, B, dt); a dict may have keys "A", "B", "dt".
    real_type, real_tolerance : str, float
        Re(w) parametrisation ("exp", "none", "softplus"); init clamp of Re(w).

    Example
    -------
    >>> w, P, B, _ = hippo_legs_nplr(16)
    >>> C = torch.randn(2, 4, 8, dtype=torch.cfloat)
    >>> kernel = SSMKernelNPLR(w[None], P[:, None], B[None], C, torch.full((4,), -3.0))
    >>> kernel(L=100).shape
    torch.Size([2, 4, 100])
    """

    def __init__(
        self, w, P, B, C, log_dt, l_max=None, lr=None, real_type="exp", real_tolerance=1e-3
    ):
        super().__init__()
        self.real_type, self.l_max = real_type, l_max
        self.H, self.N, self.rank = log_dt.size(-1), w.size(-1), P.size(0)
        self.repeat = self.H // w.size(0)
        self.C = nn.Parameter(torch.view_as_real(C.expand(-1, self.H, -1).clone()))
        lr_A = self._register_dt_B(log_dt, B.unsqueeze(0), lr)
        self.register("P", torch.view_as_real(P.clone()), lr_A)
        self.register("inv_w_real", self._real_init(w.real, real_tolerance), lr_A)
        self.register("w_imag", w.imag.clone(), lr_A)
        # length the stored C is C~ for (reference S4 checkpoints); 0: C is C itself
        self.register_buffer("L", torch.tensor(0))
        self._length = 0
        self._register_load_state_dict_pre_hook(self._sync_length)

    def ssm(self):
        """Complex (w, P, B, C~) tiled to H: (H,N), (R,H,N), (1,H,N), (c,H,N)."""
        w = (self._real(self.inv_w_real) + 1j * self.w_imag).repeat(self.repeat, 1)
        P = torch.view_as_complex(self.P).repeat(1, self.repeat, 1)
        B = torch.view_as_complex(self.B).repeat(1, self.repeat, 1)
        return w, P, B, torch.view_as_complex(self.C)

    def discrete_A(self):
        """(H, 2N, 2N) dense ``A_d`` (bilinear) of the full state, complex128."""
        w, P, _, _ = self.ssm()
        w, P = _conj(w).cdouble(), _conj(P).cdouble()
        A = torch.diag_embed(w) - torch.einsum("rhm,rhn->hmn", P, P.conj())
        half_dt = torch.exp(self.log_dt).double()[:, None, None] / 2
        eye = torch.eye(2 * self.N, dtype=A.dtype, device=A.device)
        return torch.linalg.solve(eye - half_dt * A, eye + half_dt * A)

    def _sync_length(self, state_dict, prefix, *args):
        """Load-time hook: mirror the buffer ``L`` as a Python int (no GPU sync later)."""
        if prefix + "L" in state_dict:
            self._length = int(state_dict[prefix + "L"])

    def _times_power(self, C, n, sign):
        """``C (I + sign * A_d^n)`` on the full state, first half kept (A_d^n: no grad)."""
        with torch.no_grad():
            power = torch.linalg.matrix_power(self.discrete_A(), n)
        C = _conj(C).cdouble()
        prod = torch.einsum("chn,hnm->chm", C, power.to(C.device))
        return (C + sign * prod)[..., : self.N].to(torch.view_as_complex(self.C).dtype)

    def c_tilde(self, L):
        """``(C~, n)``: the output matrix of the truncated generating function, length n >= L.

        The parameter ``C`` is the SSM's C while the buffer ``L`` is 0 (sb_mamba
        models): ``C~ = C (I - A_d^n)`` with ``n = max(L, l_max)``. A checkpoint
        of the reference S4 code stores ``C~`` itself with its length in ``L``;
        it is extended by doubling, ``C~_2n = C~_n (I + A_d^n)``, until
        ``n >= L``. Computed in every forward: the module's parameters and
        buffers are never written to (DDP ranks stay consistent).
        """
        C = torch.view_as_complex(self.C)
        if self._length == 0:
            n = max(L, self.l_max or 0)
            logger.debug("S4 kernel length %d", n)
            return self._times_power(C, n, -1), n
        n = self._length
        while n < L:
            C = self._times_power(C, n, +1)
            n *= 2
        return C, n

    def forward(self, L, rate=1.0):
        """Returns the (channels, H, L) kernel at sampling-rate factor ``rate``."""
        C_tilde, length = self.c_tilde(round(rate * L))
        n = round(length / rate)
        w, P, B, _ = self.ssm()
        C = C_tilde
        dt = torch.exp(self.log_dt) * rate
        angle = torch.arange(n // 2 + 1, device=w.device, dtype=torch.double) * (-2 * math.pi / n)
        omega = torch.polar(torch.ones_like(angle), angle).to(w.dtype)
        # Resolvent R = (2/dt (1-om)/(1+om) - A)^-1 scaled by dt; written as
        # r = (1+om) s, s = dt sum v / (2(1-om) - (1+om) dt w): no pole at om=-1.
        v = torch.cat([B, P]).unsqueeze(1) * torch.cat([C, P.conj()]).unsqueeze(0)
        s = cauchy(v.flatten(0, 1), 2 * (1 - omega), w * dt[:, None], b=1 + omega)
        s = s.unflatten(0, v.shape[:2]) * dt[:, None]  # (1+R, c+R, H, Lf)
        c, r = C.size(0), s[1:] * (1 + omega)
        # K^ = 2/(1+om) [C R B - C R P (I + Q R P)^-1 Q R B], Q = conj(P)
        if self.rank == 1:
            low = r[0, :c] * s[0, c:] / (1 + r[0, c:])
        else:
            eye = torch.eye(self.rank, dtype=r.dtype, device=r.device)
            y = torch.linalg.solve(eye + r[:, c:].permute(2, 3, 1, 0), s[0, c:].permute(1, 2, 0))
            low = torch.einsum("kchl,hlk->chl", r[:, :c], y)
        return torch.fft.irfft(2 * (s[0, :c] - low), n=n)[..., :L]


class SSMKernelDiag(_SSMModule):
    """S4D kernel: diagonal A, ZOH (or bilinear) transform, Vandermonde product.

    ``K_l = 2 Re sum_n C_n B_n dB_n dA_n^l`` with ZOH ``dA = exp(dt A)``,
    ``dB = (exp(dt A) - 1) / A``; arguments as :class:`SSMKernelNPLR` plus
    ``disc`` ("zoh" or "bilinear").

    Example
    -------
    >>> w, B = -0.5 + 3j * torch.arange(8.0).expand(4, 8), torch.ones(4, 8) + 0j
    >>> C = torch.randn(1, 4, 8, dtype=torch.cfloat)
    >>> SSMKernelDiag(w, B, C, torch.full((4,), -3.0))(L=50).shape
    torch.Size([1, 4, 50])
    """

    def __init__(self, A, B, C, log_dt, lr=None, disc="zoh", real_type="exp"):
        super().__init__()
        if disc not in ("zoh", "bilinear"):
            raise ValueError(f"unknown discretisation {disc!r}")
        self.disc, self.real_type = disc, real_type
        self.repeat = log_dt.size(-1) // A.size(0)
        self.C = nn.Parameter(torch.view_as_real(C.clone()))
        lr_A = self._register_dt_B(log_dt, B, lr)
        self.register("inv_A_real", self._real_init(A.real, 1e-4), lr_A)
        self.register("A_imag", A.imag.clone(), lr_A)

    def forward(self, L, rate=1.0):
        """Returns the (channels, H, L) kernel."""
        dt = (torch.exp(self.log_dt) * rate)[:, None]
        A = (self._real(self.inv_A_real) + 1j * self.A_imag).repeat(self.repeat, 1)
        C = torch.view_as_complex(self.C) * torch.view_as_complex(self.B).repeat(self.repeat, 1)
        if self.disc == "zoh":
            C, log_dA = C * (torch.exp(dt * A) - 1) / A, dt * A
        else:
            C, log_dA = C * dt / (1 - dt * A / 2), torch.log((1 + dt * A / 2) / (1 - dt * A / 2))
        vander = torch.exp(log_dA.unsqueeze(-1) * torch.arange(L, device=A.device))
        return 2 * (C.transpose(0, 1) @ vander).real.transpose(0, 1)


class S4Kernel(nn.Module):
    """SSM initialisation + kernel (the reference ``SSKernel``).

    Arguments
    ---------
    H, N, L : int
        d_model, d_state (N/2 conjugate pairs stored) and l_max (or None).
    measure : str, optional
        "legs" (default of "nplr"), "diag-lin" (default of "diag"), "diag-inv"
        or "diag-legs".
    rank, channels, dt_min, dt_max, lr, n_ssm
        Low-rank size, output channels, log-uniform dt init range, optimizer
        hint, trainable (A, B) copies (default H); as the reference.
    mode : str
        "nplr" (full S4) or "diag" (S4D).
    **kernel_args
        To the kernel class (real_type, real_tolerance, disc).

    Example
    -------
    >>> S4Kernel(8, N=16, channels=2)(L=30).shape
    torch.Size([2, 8, 30])
    """

    def __init__(
        self,
        H,
        N=64,
        L=None,
        measure=None,
        rank=1,
        channels=1,
        dt_min=0.001,
        dt_max=0.1,
        lr=None,
        mode="nplr",
        n_ssm=None,
        **kernel_args,
    ):
        super().__init__()
        n_ssm = n_ssm or H
        if H % n_ssm:
            raise ValueError("n_ssm must divide H")
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        measure = measure or ("legs" if mode == "nplr" else "diag-lin")
        if measure == "legs":
            w, P, B, _ = hippo_legs_nplr(N, rank)
            w, B, P = w.repeat(n_ssm, 1), B.repeat(n_ssm, 1), P[:, None].repeat(1, n_ssm, 1)
        else:
            w, P, B = _s4d_init(measure, N, n_ssm, rank)
        # conj as the reference (which stores conj of its draw): same seed, same init
        C = torch.randn(channels, H, N // 2, dtype=torch.cfloat).conj().resolve_conj()
        if mode == "nplr":
            self.kernel = SSMKernelNPLR(w, P, B, C, log_dt, l_max=L, lr=lr, **kernel_args)
        elif mode == "diag":
            if not measure.startswith("diag"):
                logger.warning("S4D kernel with the non-diagonal init %r", measure)
            C = C * B.repeat(H // n_ssm, 1)
            self.kernel = SSMKernelDiag(w, B, C, log_dt, lr=lr, **kernel_args)
        else:
            raise ValueError(f"unknown S4 mode {mode!r}")

    def forward(self, L, rate=1.0):
        """Returns the (channels, H, L) convolution kernel."""
        return self.kernel(L=L, rate=rate)
