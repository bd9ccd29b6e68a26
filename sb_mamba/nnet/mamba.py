"""Mamba: the selective state-space mixer, its pre-norm block and BiMamba.

Parameter names and shapes are identical to ``mamba_ssm.Mamba`` (and
``mamba_ssm``'s ``Block``: ``mixer.*``, ``norm.*``), so one state_dict loads on
either backend. The scan itself runs on the backend chosen by
``ssm_backend`` (see :mod:`sb_mamba.nnet.scan`); no module of mamba-ssm is
imported unless the ``cuda`` backend is used.

Every module here maps ``[B, L, N] -> [B, L, N]`` (BiMamba with
``merge="concat"`` maps to ``[B, L, 2N]``, as SPMamba needs).

Each mixer picks its path from its backend (see :mod:`sb_mamba.nnet.scan`):

* ``cuda`` (what ``auto`` picks for CUDA tensors when mamba-ssm works):
  exactly what ``mamba_ssm.Mamba`` runs, ``mamba_inner_fn`` on
  ``in_proj``'s output laid out (B, 2 Di, L), or ``F.conv1d`` +
  ``selective_scan_fn`` without causal-conv1d; :meth:`Mamba.step` uses
  ``causal_conv1d_update`` and ``selective_state_update`` where they import;
* ``cpu_kernel`` (what ``auto`` picks on CPU) with float32 tensors: the fused
  C++ kernels of :mod:`sb_mamba.nnet.fused` (same parameters, same results);
* anything else (the ``torch`` backend, other dtypes): the step-by-step
  PyTorch code below.

Authors
-------
 * sb_mamba developers
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_mamba.nnet.fused import fused_path_applies, mamba_mixer_cpu
from sb_mamba.nnet.mamba_ops import (  # noqa: F401 (public here too)
    causal_depthwise_conv1d,
    init_mamba_weights,
)
from sb_mamba.nnet.scan import BACKENDS, mamba_ssm_ops, resolve_backend, selective_scan


class Mamba(nn.Module):
    """Selective state-space mixer (Gu & Dao, 2023), mamba-ssm 1.x layout.

    Arguments
    ---------
    d_model : int
        Input and output features N.
    d_state : int
        State size per channel.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    expand : int
        Inner width is ``expand * d_model``.
    dt_rank : int or "auto"
        Rank of the step-size projection; "auto" is ``ceil(d_model / 16)``.
    dt_min, dt_max, dt_init_floor, dt_scale : float
        Initialisation of the step sizes, as in mamba-ssm.
    conv_bias : bool
        Bias of the depthwise convolution.
    bias : bool
        Bias of the input and output projections.
    ssm_backend : str
        ``"auto"``, ``"torch"``, ``"cpu_kernel"`` or ``"cuda"``.

    Example
    -------
    >>> m = Mamba(d_model=16, d_state=4)
    >>> m(torch.randn(2, 30, 16)).shape
    torch.Size([2, 30, 16])
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        dt_scale=1.0,
        conv_bias=True,
        bias=False,
        ssm_backend="auto",
    ):
        super().__init__()
        if ssm_backend not in BACKENDS:
            raise ValueError(
                f"Unknown ssm_backend {ssm_backend!r}: choose one of {BACKENDS}."
            )
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.ssm_backend = ssm_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(
            self.d_inner, self.dt_rank + 2 * d_state, bias=False
        )
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        # Step-size init (mamba-ssm): dt ~ logU[dt_min, dt_max], bias = softplus^-1.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        # S4D-real init of A, kept in log space; D is the skip.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def uses_fused_path(self, x):
        """Whether :meth:`forward` on ``x`` runs the fused CPU kernels.

        Arguments
        ---------
        x : torch.Tensor
            The input [B, L, N].

        Returns
        -------
        bool
            True for float32 CPU tensors (and parameters) outside autocast
            when the backend resolves to ``"cpu_kernel"``.

        Example
        -------
        >>> Mamba(8, ssm_backend="torch").uses_fused_path(torch.randn(1, 4, 8))
        False
        """
        return fused_path_applies(self, x)

    def forward(self, hidden_states, reverse=False):
        """Mix along time: [B, L, N] -> [B, L, N].

        Arguments
        ---------
        hidden_states : torch.Tensor
            [B, L, N].
        reverse : bool
            Mix the time-reversed sequence (the output is returned in the
            original order), as ``m(x.flip(1)).flip(1)`` but without copies
            on the fused path.

        Returns
        -------
        torch.Tensor
            [B, L, N].
        """
        if resolve_backend(self.ssm_backend, hidden_states.device) == "cuda":
            if reverse:
                return self._forward_cuda(hidden_states.flip(1)).flip(1)
            return self._forward_cuda(hidden_states)
        if self.uses_fused_path(hidden_states):
            return mamba_mixer_cpu(self, hidden_states, reverse)
        if reverse:
            return self._forward_ref(hidden_states.flip(1)).flip(1)
        return self._forward_ref(hidden_states)

    def _forward_cuda(self, hidden_states):
        """mamba_ssm.Mamba's forward (no inference cache) on mamba-ssm's functions."""
        ops = mamba_ssm_ops()
        batch, seqlen, _ = hidden_states.shape
        # xz laid out (B, 2 Di, L) with unit stride in time, as mamba-ssm builds it
        xz = (self.in_proj.weight @ hidden_states.reshape(-1, self.d_model).t())
        xz = xz.view(-1, batch, seqlen).transpose(0, 1)  # [B, 2*Di, L]
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # [Di, S]
        if ops["mamba_inner_fn"] is not None and ops["causal_conv1d_fn"] is not None:
            return ops["mamba_inner_fn"](
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A, None,
                None, self.D.float(), delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            )  # [B, L, N]
        x, z = xz.chunk(2, dim=1)  # [B, Di, L] each
        if ops["causal_conv1d_fn"] is not None:
            x = ops["causal_conv1d_fn"](x=x, weight=self.conv1d.weight.squeeze(1),
                                        bias=self.conv1d.bias, activation="silu")
        else:
            x = F.silu(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, -1))  # [(B L), R + 2S]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(-1, batch, seqlen).transpose(0, 1)
        B = B.view(batch, seqlen, -1).transpose(1, 2).contiguous()  # [B, S, L]
        C = C.view(batch, seqlen, -1).transpose(1, 2).contiguous()
        y = ops["selective_scan_fn"](x, dt, A, B, C, self.D.float(), z=z,
                                     delta_bias=self.dt_proj.bias.float(),
                                     delta_softplus=True)  # [B, Di, L]
        return self.out_proj(y.transpose(1, 2))

    def _forward_ref(self, hidden_states):
        """The step-by-step PyTorch forward (any device, dtype and backend)."""
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2*Di, L]
        x, z = xz.chunk(2, dim=1)  # [B, Di, L] each
        x = F.silu(causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias))
        x_dbl = self.x_proj(x.transpose(1, 2))  # [B, L, R + 2S]
        dt, B, C = torch.split(
            x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # [B, Di, L]
        A = -torch.exp(self.A_log.float())  # [Di, S]
        y = selective_scan(
            x,
            dt,
            A,
            B.transpose(1, 2),  # [B, S, L]
            C.transpose(1, 2),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.ssm_backend,
        )  # [B, Di, L]
        return self.out_proj(y.transpose(1, 2))  # [B, L, N]

    def allocate_inference_cache(self, batch_size, dtype=None, device=None):
        """Zero states for :meth:`step`.

        Arguments
        ---------
        batch_size : int
            Number of streams.
        dtype : torch.dtype, optional
            dtype of the convolution state (the SSM state is float32).
        device : torch.device, optional
            Defaults to the parameters' device.

        Returns
        -------
        conv_state : torch.Tensor
            [B, Di, d_conv].
        ssm_state : torch.Tensor
            [B, Di, d_state], float32.
        """
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        conv_state = torch.zeros(
            batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype
        )
        ssm_state = torch.zeros(
            batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32
        )
        return conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """Advance one time step (streaming inference), as mamba-ssm's step.

        Arguments
        ---------
        hidden_states : torch.Tensor
            [B, 1, N], the next frame.
        conv_state : torch.Tensor
            [B, Di, d_conv], updated in place.
        ssm_state : torch.Tensor
            [B, Di, d_state], updated in place.

        Returns
        -------
        out : torch.Tensor
            [B, 1, N].
        conv_state, ssm_state : torch.Tensor
            The updated states.

        Example
        -------
        >>> m = Mamba(d_model=8, d_state=4).eval()
        >>> conv, ssm = m.allocate_inference_cache(2)
        >>> y, conv, ssm = m.step(torch.randn(2, 1, 8), conv, ssm)
        >>> y.shape
        torch.Size([2, 1, 8])
        """
        if hidden_states.shape[1] != 1:
            raise ValueError("step() takes one frame: hidden_states [B, 1, N].")
        xz = self.in_proj(hidden_states.squeeze(1))  # [B, 2*Di]
        x, z = xz.chunk(2, dim=-1)  # [B, Di]
        cuda = resolve_backend(self.ssm_backend, hidden_states.device) == "cuda"
        ops = mamba_ssm_ops() if cuda else {}
        if ops.get("causal_conv1d_update") is not None:
            x = ops["causal_conv1d_update"](x, conv_state, self.conv1d.weight.squeeze(1),
                                            self.conv1d.bias, "silu")
        else:
            conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
            conv_state[:, :, -1] = x
            x = (conv_state * self.conv1d.weight.squeeze(1)).sum(-1)  # [B, Di]
            if self.conv1d.bias is not None:
                x = x + self.conv1d.bias
            x = F.silu(x)
        dt, B, C = torch.split(
            self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        A = -torch.exp(self.A_log.float())  # [Di, S]
        if ops.get("selective_state_update") is not None:
            y = ops["selective_state_update"](
                ssm_state, x, F.linear(dt, self.dt_proj.weight), A, B, C, self.D, z=z,
                dt_bias=self.dt_proj.bias, dt_softplus=True,
            )  # [B, Di]
        else:
            dt = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias)
            dt = dt.float()
            dA = torch.exp(dt[..., None] * A)  # [B, Di, S]
            dBu = dt[..., None] * B.float()[:, None, :] * x.float()[..., None]
            ssm_state.copy_(ssm_state * dA + dBu)
            y = (ssm_state * C.float()[:, None, :]).sum(-1)  # [B, Di]
            y = (y + self.D.float() * x.float()) * F.silu(z.float())
        out = self.out_proj(y.to(hidden_states.dtype))
        return out.unsqueeze(1), conv_state, ssm_state


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
        self, d_model, norm="layernorm", norm_epsilon=1e-5, residual_in_fp32=False,
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

    def forward(self, x, reverse=False):
        """[B, L, N] -> [B, L, N]; ``reverse`` is passed to the mixer."""
        residual = x.float() if self.residual_in_fp32 else x
        hidden = self.mixer(self.norm(x.to(self.norm.weight.dtype)), reverse=reverse)
        if hidden.dtype == residual.dtype:  # out_proj's fresh output: add in place
            return hidden.add_(residual).to(x.dtype)
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
        self, d_model, num_blocks=1, bidirectional=True, merge="sum",
        norm="layernorm", norm_epsilon=1e-5, **mamba_kwargs,
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
        if self.backward_blocks[0].mixer.uses_fused_path(x):
            # the fused kernels run backwards in time: no flip copies
            y_b = self._run(self.backward_blocks, x, reverse=True)  # [B, L, N]
        else:
            y_b = self._run(self.backward_blocks, x.flip(1)).flip(1)  # [B, L, N]
        if self.merge == "sum":
            return y + y_b
        return torch.cat([y, y_b], dim=-1)  # [B, L, 2N]
