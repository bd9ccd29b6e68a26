"""Mamba blocks: the pre-norm residual block and BiMamba's stacks of blocks.

Parameter names follow ``mamba_ssm``'s ``Block`` (``mixer.*``, ``norm.*``), so
one state_dict loads on either backend. :class:`MambaBlock` maps
``[B, L, N] -> [B, L, N]``; :class:`BiMamba` too, or ``[B, L, 2N]`` with
``merge="concat"`` (as SPMamba needs).

Authors
-------
 * sb_mamba developers
"""

import torch
import torch.nn as nn

from sb_mamba.nnet.mamba import Mamba, init_mamba_weights


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block, as mamba-ssm's ``Block``.

    ``x + Mamba(norm(x))``; with several blocks in a row this equals
    mamba-ssm's ``(hidden, residual)`` chaining followed by ``hidden +
    residual``. Parameter names: ``mixer.*`` and ``norm.*``.

    Arguments
    ---------
    d_model : int
        Features N.
    norm : str
        ``"layernorm"`` (SepMamba) or ``"rmsnorm"`` (SPMamba).
    norm_epsilon : float
        Epsilon of the norm.
    residual_in_fp32 : bool
        Keep the residual stream in float32 under mixed precision.
    **mamba_kwargs
        Passed to :class:`Mamba` (d_state, d_conv, expand, ssm_backend, ...).

    Example
    -------
    >>> blk = MambaBlock(16, norm="rmsnorm", d_state=4)
    >>> blk(torch.randn(2, 30, 16)).shape
    torch.Size([2, 30, 16])
    """

    def __init__(
        self,
        d_model,
        norm="layernorm",
        norm_epsilon=1e-5,
        residual_in_fp32=False,
        **mamba_kwargs,
    ):
        super().__init__()
        if norm == "layernorm":
            self.norm = nn.LayerNorm(d_model, eps=norm_epsilon)
        elif norm == "rmsnorm":
            self.norm = nn.RMSNorm(d_model, eps=norm_epsilon)
        else:
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}.")
        self.mixer = Mamba(d_model, **mamba_kwargs)
        self.residual_in_fp32 = residual_in_fp32

    @torch.no_grad()
    def make_identity(self):
        """Zero the mixer's output projection: the block then maps ``x`` to ``x``.

        How a block added to a trained stack starts (see
        :meth:`sb_mamba.lobes.sepmamba.SepMamba.load_shallower_state_dict`):
        the stack computes what it did, and the block's output projection
        gets gradients from the first step (its other weights from the next).

        Example
        -------
        >>> blk = MambaBlock(8, d_state=4)
        >>> blk.make_identity()
        >>> x = torch.randn(1, 5, 8)
        >>> torch.equal(blk(x), x)
        True
        """
        self.mixer.out_proj.weight.zero_()
        if self.mixer.out_proj.bias is not None:
            self.mixer.out_proj.bias.zero_()

    def reverses_without_flip(self, x):
        """Whether ``forward(x, reverse=True)`` reads time backwards without copies.

        True on the fused CPU kernels, which run backwards in time; elsewhere a
        stack of blocks is better run once on ``x.flip(1)``.

        Arguments
        ---------
        x : torch.Tensor
            The input [B, L, N].

        Returns
        -------
        bool

        Example
        -------
        >>> MambaBlock(8, ssm_backend="torch").reverses_without_flip(torch.randn(1, 4, 8))
        False
        """
        return self.mixer.uses_fused_path(x)

    def forward(self, x, reverse=False):
        """[B, L, N] -> [B, L, N]; ``reverse`` is passed to the mixer."""
        residual = x.float() if self.residual_in_fp32 else x
        hidden = self.mixer(self.norm(x.to(self.norm.weight.dtype)), reverse=reverse)
        if hidden.dtype == residual.dtype:  # out_proj's fresh output: add in place
            return hidden.add_(residual).to(x.dtype)
        return (residual + hidden).to(x.dtype)

    def forward_chunk(self, x, chunk_state):
        """The next frames of a stream: [B, L, N] -> [B, L, N] (see
        :meth:`Mamba.forward_chunk`; ``chunk_state`` is updated in place)."""
        hidden = self.mixer.forward_chunk(self.norm(x.to(self.norm.weight.dtype)), chunk_state)
        if hidden.dtype == x.dtype and not self.residual_in_fp32:
            return hidden.add_(x)
        residual = x.float() if self.residual_in_fp32 else x
        return (residual + hidden).to(x.dtype)


class BiMamba(nn.Module):
    """Stacks of Mamba blocks over time and over reversed time.

    The forward stack reads ``x``; the backward stack (separate weights) reads
    ``x`` flipped in time and its output is flipped back. The two are merged
    by ``sum`` (SepMamba) or ``concat`` (SPMamba). With
    ``bidirectional=False`` only the forward stack exists: a causal mixer.

    Arguments
    ---------
    d_model : int
        Features N.
    num_blocks : int
        Mamba blocks per direction.
    bidirectional : bool
        Add the time-reversed stack.
    merge : str
        ``"sum"`` -> [B, L, N]; ``"concat"`` -> [B, L, 2N].
    norm : str
        ``"layernorm"`` or ``"rmsnorm"``.
    norm_epsilon : float
        Epsilon of the norms.
    **mamba_kwargs
        Passed to :class:`Mamba`.

    Example
    -------
    >>> bm = BiMamba(16, num_blocks=2, d_state=4)
    >>> bm(torch.randn(2, 30, 16)).shape
    torch.Size([2, 30, 16])
    >>> BiMamba(16, 1, merge="concat", d_state=4)(torch.randn(2, 30, 16)).shape
    torch.Size([2, 30, 32])
    """

    def __init__(
        self,
        d_model,
        num_blocks=1,
        bidirectional=True,
        merge="sum",
        norm="layernorm",
        norm_epsilon=1e-5,
        **mamba_kwargs,
    ):
        super().__init__()
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat', got {merge!r}.")
        self.merge, self.bidirectional = merge, bidirectional

        def stack():
            blocks = nn.ModuleList(
                MambaBlock(d_model, norm=norm, norm_epsilon=norm_epsilon, **mamba_kwargs)
                for _ in range(num_blocks)
            )
            for blk in blocks:
                blk.apply(lambda m: init_mamba_weights(m, n_layer=num_blocks))
            return blocks

        self.forward_blocks = stack()
        self.backward_blocks = stack() if bidirectional else None
        mult = 2 if (bidirectional and merge == "concat") else 1
        self.output_size = mult * d_model

    @staticmethod
    def _run(blocks, x, reverse=False):
        for blk in blocks:
            x = blk(x, reverse=reverse)
        return x

    def forward(self, x):
        """[B, L, N] -> [B, L, N] (sum) or [B, L, 2N] (concat)."""
        return self._contiguous_grad(self._forward(x))

    def allocate_chunk_state(self, batch_size, device=None):
        """Zero states of every block for :meth:`forward_chunk` (causal only).

        Arguments
        ---------
        batch_size : int
            Number of streams.
        device : torch.device, optional
            Defaults to the parameters' device.

        Returns
        -------
        list of dict
            One :meth:`Mamba.allocate_chunk_state` per forward block.
        """
        if self.bidirectional:
            raise ValueError(
                "A bidirectional BiMamba reads the future (its backward "
                "stack): it cannot stream; build it with bidirectional=False."
            )
        return [blk.mixer.allocate_chunk_state(batch_size, device) for blk in self.forward_blocks]

    def forward_chunk(self, x, chunk_state):
        """The next frames of a stream, [B, L, N] -> [B, L, N] (causal only).

        Arguments
        ---------
        x : torch.Tensor
            [B, L, N], the next frames.
        chunk_state : list of dict
            From :meth:`allocate_chunk_state`, updated in place.

        Returns
        -------
        torch.Tensor
            [B, L, N]: fed in pieces, the stream gives :meth:`forward` of
            the whole sequence.

        Example
        -------
        >>> bm = BiMamba(8, num_blocks=2, bidirectional=False, d_state=4).eval()
        >>> x, st = torch.randn(1, 20, 8), bm.allocate_chunk_state(1)
        >>> with torch.no_grad():
        ...     y = torch.cat([bm.forward_chunk(x[:, a:b], st) for a, b in ((0, 3), (3, 20))], 1)
        ...     torch.allclose(y, bm(x), atol=1e-5)
        True
        """
        for blk, state in zip(self.forward_blocks, chunk_state):
            x = blk.forward_chunk(x, state)
        return x

    @staticmethod
    def _contiguous_grad(y):
        """Make the gradient that reaches ``y`` contiguous (one copy).

        A consumer that transposes the [B, L, N] output back to [B, N, L]
        (as SepMamba's convolutions do) sends back a transposed gradient,
        through which every elementwise op of the blocks' backward would
        then have to stride.
        """
        if torch.is_grad_enabled() and y.requires_grad:
            y.register_hook(lambda g: g.contiguous())
        return y

    def _forward(self, x):
        y = self._run(self.forward_blocks, x)  # [B, L, N]
        if not self.bidirectional:
            return y
        if self.backward_blocks[0].reverses_without_flip(x):
            # the fused kernels run backwards in time: no flip copies
            y_b = self._run(self.backward_blocks, x, reverse=True)  # [B, L, N]
        else:
            y_b = self._run(self.backward_blocks, x.flip(1)).flip(1)  # [B, L, N]
        if self.merge == "sum":
            return y + y_b
        return torch.cat([y, y_b], dim=-1)  # [B, L, 2N]
