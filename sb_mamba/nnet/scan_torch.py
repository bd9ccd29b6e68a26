"""The selective scan in plain PyTorch: the ``torch`` backend and a reference.

:func:`scan_fwd_torch` and :func:`scan_bwd_torch` are the forward and the
reverse-time backward of the ``torch`` backend of
:func:`sb_mamba.nnet.scan.selective_scan`, on time-major float32 tensors (the
inputs of its autograd function). :func:`selective_scan_ref` is the textbook
recurrence, one step at a time, that the tests and ``benchmarks/bench_scan.py``
compare every backend with.

Authors
-------
 * sb_mamba developers
"""

import torch
import torch.nn.functional as F


def _per_channel(Mt, dim):
    """(b, G, L, N) -> (L, b, dim or 1, N) view/expansion per channel."""
    M = Mt.permute(2, 0, 1, 3)  # (L, b, G, N)
    G = M.shape[2]
    if G == 1 or G == dim:
        return M
    return M.repeat_interleave(dim // G, dim=2)


def _group_sum(M, G):
    """(L, b, dim, N) summed over the channels of each group -> (b, G, L, N)."""
    L, b, dim, N = M.shape
    return M.reshape(L, b, G, dim // G, N).sum(3).permute(1, 2, 0, 3)


def scan_fwd_torch(u, delta, A, Bt, Ct, x0=None):
    """The recurrence ``x = exp(delta A) x + delta B u``, ``y = C x``, in PyTorch.

    Arguments
    ---------
    u, delta : torch.Tensor
        (b, d, L) float32, the input and the (final) step sizes.
    A : torch.Tensor
        (d, N).
    Bt, Ct : torch.Tensor
        (b, G, L, N), time-major, ``d % G == 0``.
    x0 : torch.Tensor, optional
        (b, d, N), the state before the first step (zeros by default): a
        sequence scanned in pieces, each from the last one's final state
        ``xs[-1]``, gives the states and outputs of one scan.

    Returns
    -------
    y : torch.Tensor
        (b, d, L).
    xs : torch.Tensor
        (L, b, d, N), every state (what :func:`scan_bwd_torch` needs).

    Example
    -------
    >>> u, delta, A = torch.randn(2, 4, 9), torch.rand(2, 4, 9), -torch.rand(4, 3)
    >>> Bt, Ct = torch.randn(2, 1, 9, 3), torch.randn(2, 1, 9, 3)
    >>> y, xs = scan_fwd_torch(u, delta, A, Bt, Ct)
    >>> y.shape, xs.shape
    (torch.Size([2, 4, 9]), torch.Size([9, 2, 4, 3]))
    >>> y1, xs1 = scan_fwd_torch(u[..., :4], delta[..., :4], A, Bt[:, :, :4], Ct[:, :, :4])
    >>> y2, _ = scan_fwd_torch(u[..., 4:], delta[..., 4:], A, Bt[:, :, 4:], Ct[:, :, 4:],
    ...                        x0=xs1[-1])
    >>> torch.allclose(torch.cat([y1, y2], -1), y, atol=1e-6)
    True
    """
    b, dim, L = u.shape
    dT = delta.permute(2, 0, 1).unsqueeze(-1)  # (L, b, d, 1)
    dA = torch.exp(dT * A)  # (L, b, d, N)
    dBu = (dT * u.permute(2, 0, 1).unsqueeze(-1)) * _per_channel(Bt, dim)
    xs = torch.empty_like(dA)
    x = torch.zeros_like(dA[0]) if x0 is None else x0.to(dA.dtype).expand_as(dA[0])
    for t in range(L):
        x = torch.addcmul(dBu[t], dA[t], x, out=xs[t])
    y = (xs * _per_channel(Ct, dim)).sum(-1)  # (L, b, d)
    return y.permute(1, 2, 0).contiguous(), xs


def scan_bwd_torch(u, delta, A, Bt, Ct, xs, gy, x0=None):
    """Gradients of :func:`scan_fwd_torch` by a reverse-time scan, in PyTorch.

    Arguments
    ---------
    u, delta, A, Bt, Ct : torch.Tensor
        As in :func:`scan_fwd_torch`.
    xs : torch.Tensor
        (L, b, d, N), the states that :func:`scan_fwd_torch` returned.
    gy : torch.Tensor
        (b, d, L), the gradient of ``y``.
    x0 : torch.Tensor, optional
        (b, d, N), the initial state of the forward (zeros by default); it
        receives no gradient.

    Returns
    -------
    tuple of torch.Tensor
        The gradients of u, delta, A, Bt and Ct, in their shapes.

    Example
    -------
    >>> u, delta, A = torch.randn(2, 4, 9), torch.rand(2, 4, 9), -torch.rand(4, 3)
    >>> Bt, Ct = torch.randn(2, 1, 9, 3), torch.randn(2, 1, 9, 3)
    >>> y, xs = scan_fwd_torch(u, delta, A, Bt, Ct)
    >>> [tuple(g.shape) for g in scan_bwd_torch(u, delta, A, Bt, Ct, xs, torch.ones_like(y))]
    [(2, 4, 9), (2, 4, 9), (4, 3), (2, 1, 9, 3), (2, 1, 9, 3)]
    """
    b, dim, L = u.shape
    G = Bt.shape[1]
    dT = delta.permute(2, 0, 1).unsqueeze(-1)  # (L, b, d, 1)
    uT = u.permute(2, 0, 1).unsqueeze(-1)
    gT = gy.permute(2, 0, 1).unsqueeze(-1)
    Bc, Cc = _per_channel(Bt, dim), _per_channel(Ct, dim)
    dA = torch.exp(dT * A)  # (L, b, d, N)
    gxs = gT * Cc  # direct gradient of each state, then accumulated in place
    for t in range(L - 2, -1, -1):
        gxs[t].addcmul_(gxs[t + 1], dA[t + 1])
    first = torch.zeros_like(xs[:1]) if x0 is None else x0.to(xs.dtype).expand_as(xs[:1])
    x_prev = torch.cat([first, xs[:-1]])
    g_logdA = gxs * x_prev * dA  # gradient w.r.t. (delta * A)
    gB_part = gxs * Bc  # (L, b, d, N)
    ddelta = (g_logdA * A).sum(-1) + gB_part.sum(-1) * uT[..., 0]
    du = gB_part.sum(-1) * dT[..., 0]
    dA_grad = (g_logdA * dT).sum((0, 1))
    dB = _group_sum(gxs * (dT * uT), G)
    dC = _group_sum(xs * gT, G)
    return (
        du.permute(1, 2, 0),
        ddelta.permute(1, 2, 0),
        dA_grad,
        dB,
        dC,
    )


def selective_scan_ref(
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
    initial_state=None,
):
    """Plain sequential reference of :func:`selective_scan` (autograd loop).

    The textbook recurrence, one time step at a time, in the dtype of the
    inputs. It is the numerical reference for the tests and the "naive" line
    of ``benchmarks/bench_scan.py``; it is far too slow to train with.

    Arguments
    ---------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
        As in :func:`selective_scan` (B and C: (batch, N, L) or
        (batch, G, N, L)).

    Returns
    -------
    out : torch.Tensor
        (batch, dim, L).
    last_state : torch.Tensor
        Only when ``return_last_state``.

    Example
    -------
    >>> u, delta = torch.randn(1, 3, 10), torch.rand(1, 3, 10)
    >>> A, B, C = -torch.rand(3, 2), torch.randn(1, 2, 10), torch.randn(1, 2, 10)
    >>> selective_scan_ref(u, delta, A, B, C).shape
    torch.Size([1, 3, 10])
    """
    batch, dim, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    rep = dim // B.shape[1]
    Bd = B.repeat_interleave(rep, dim=1)  # (batch, dim, N, L)
    Cd = C.repeat_interleave(rep, dim=1)
    x = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]  # (batch, dim, 1)
        x = torch.exp(dt * A) * x + dt * Bd[..., t] * u[:, :, t, None]
        ys.append((x * Cd[..., t]).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + D[:, None] * u
    if z is not None:
        out = out * F.silu(z)
    return (out, x) if return_last_state else out
