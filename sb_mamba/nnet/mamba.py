"""Mamba: the selective state-space mixer, ``[B, L, N] -> [B, L, N]``.

Parameter names and shapes are identical to ``mamba_ssm.Mamba``, so one
state_dict loads on either backend (its pre-norm block and the stacks of
blocks are in :mod:`sb_mamba.nnet.bimamba`). The scan itself runs on the
backend chosen by ``ssm_backend`` (see :mod:`sb_mamba.nnet.scan`); no module
of mamba-ssm is imported unless the ``cuda`` backend is used.

Each mixer picks its path from its backend (see :mod:`sb_mamba.nnet.scan`):

* ``cuda`` (what ``auto`` picks for CUDA tensors when mamba-ssm works):
  exactly what ``mamba_ssm.Mamba`` runs, ``mamba_inner_fn`` on
  ``in_proj``'s output laid out (B, 2 Di, L), or ``F.conv1d`` +
  ``selective_scan_fn`` without causal-conv1d; :meth:`Mamba.step` uses
  ``causal_conv1d_update`` and ``selective_state_update`` where they import;
* ``cpu_kernel`` (what ``auto`` picks on CPU) with float32 tensors: the fused
  C++ kernels, :func:`~sb_mamba.nnet.fused.mamba_inner_cpu` (same parameters,
  same results);
* anything else (the ``torch`` backend, other dtypes): the step-by-step
  PyTorch op :func:`~sb_mamba.nnet.fused.mamba_inner_ref`.

The module chooses the path (:meth:`Mamba.uses_fused_path`) and passes its
parameters to the ops of :mod:`sb_mamba.nnet.fused`, which take tensors only.
The backend is a run option, not part of a model: :func:`set_ssm_backend`
sets it once on every mixer of a model (recipes: ``--ssm_backend``;
``MambaSeparator.from_hparams(run_opts={"ssm_backend": ...})``; the CLI:
``--backend``), and :func:`~sb_mamba.nnet.scan.resolve_backend` decides what
it means on a device once per process. :meth:`Mamba.pack_int8` (the inference precision
``int8``, :mod:`sb_mamba.inference.precision`) runs ``in_proj`` and ``out_proj`` as int8
products on the CPU paths.

Authors
-------
 * sb_mamba developers
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_mamba.nnet.fused import (
    mamba_inner_cpu,
    mamba_inner_ref,
    mamba_mixer_chunk_cpu,
    mamba_mixer_inference_cpu,
)
from sb_mamba.nnet.int8 import PackedLinear, linear
from sb_mamba.nnet.scan import BACKENDS, mamba_ssm_ops, resolve_backend


def set_ssm_backend(model, backend):
    """Set the selective-scan backend of every Mamba mixer in ``model``.

    The backend is a run option (like the device): set once per run on the
    model, never stored with it (``get_model_args`` and model folders do not
    carry it).

    Arguments
    ---------
    model : torch.nn.Module
        Any module; its :class:`Mamba` submodules (itself included) are set.
    backend : str
        ``"auto"``, ``"torch"``, ``"cpu_kernel"`` or ``"cuda"``.

    Returns
    -------
    int
        Number of mixers set (0 for a model without Mamba, e.g. S4M).

    Example
    -------
    >>> net = torch.nn.Sequential(Mamba(8), Mamba(8))
    >>> set_ssm_backend(net, "torch"), net[1].ssm_backend
    (2, 'torch')
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown ssm_backend {backend!r}: choose one of {BACKENDS}.")
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    for m in mixers:
        m.ssm_backend = backend
    return len(mixers)


def init_mamba_weights(module, n_layer, n_residuals_per_layer=1):
    """mamba-ssm's ``_init_weights``: zero Linear biases, rescale out_proj.

    Apply with ``model.apply(partial(init_mamba_weights, n_layer=...))`` as
    mamba-ssm's ``create_block`` users (SepMamba, SPMamba) do.

    Arguments
    ---------
    module : torch.nn.Module
        Visited module.
    n_layer : int
        Number of residual blocks in the stack.
    n_residuals_per_layer : int
        Residual branches per block (1 for Mamba).

    Example
    -------
    >>> m = Mamba(8, d_state=4, bias=True)
    >>> _ = m.apply(lambda mod: init_mamba_weights(mod, n_layer=2))
    >>> bool((m.in_proj.bias == 0).all()), m.out_proj.weight.shape
    (True, torch.Size([8, 16]))
    """
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    for name, p in module.named_parameters():
        if name in ("out_proj.weight", "fc2.weight"):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_residuals_per_layer * n_layer)


def _cpu_autocast_enabled():
    """Whether CPU autocast is on (with the torch >= 2.1 APIs)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


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
        ``"auto"``, ``"torch"``, ``"cpu_kernel"`` or ``"cuda"``; a run
        option that :func:`set_ssm_backend` sets on a whole model.

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
            raise ValueError(f"Unknown ssm_backend {ssm_backend!r}: choose one of {BACKENDS}.")
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
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        # Step-size init (mamba-ssm): dt ~ logU[dt_min, dt_max], bias = softplus^-1.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
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
        self._int8 = None  # in_proj and out_proj packed by pack_int8 (inference)

    def pack_int8(self):
        """Run ``in_proj`` and ``out_proj`` in int8 from now on (CPU inference).

        Their weights are quantized per output channel and packed once
        (:class:`~sb_mamba.nnet.int8.PackedLinear`); the inputs are quantized
        per call. The convolution, ``x_proj``, the step sizes and the scan
        and its state stay float32. The parameters are kept (the state_dict
        is unchanged); pack again after changing them. Inference only: a
        forward that needs gradients raises.

        Example
        -------
        >>> m = Mamba(16, d_state=4).eval()
        >>> x = torch.randn(1, 40, 16)
        >>> with torch.no_grad():
        ...     ref = m(x)
        ...     m.pack_int8()
        ...     y = m(x)
        >>> bool((y - ref).norm() / ref.norm() < 0.05), y.shape
        (True, torch.Size([1, 40, 16]))
        """
        self._int8 = (
            PackedLinear(self.in_proj.weight, self.in_proj.bias),
            PackedLinear(self.out_proj.weight, self.out_proj.bias),
        )

    def _projections(self):
        """(in weight, in bias, out weight, out bias): float, or int8 packed."""
        if self._int8 is None:
            return self.in_proj.weight, self.in_proj.bias, self.out_proj.weight, self.out_proj.bias
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(
                "This Mamba runs its projections in int8 (pack_int8), which is for "
                "inference: run it under torch.no_grad(), or load it again in fp32 to train."
            )
        return self._int8[0], None, self._int8[1], None

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
        if x.device.type != "cpu" or x.dtype != torch.float32 or _cpu_autocast_enabled():
            return False
        if any(p.dtype != torch.float32 for p in self.parameters()):
            return False
        return resolve_backend(self.ssm_backend, x.device) == "cpu_kernel"

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
            if self._int8 is not None:
                raise RuntimeError("int8 projections (pack_int8) run on the CPU only.")
            if reverse:
                return self._forward_cuda(hidden_states.flip(1)).flip(1)
            return self._forward_cuda(hidden_states)
        if self.uses_fused_path(hidden_states):
            return self._forward_fused(hidden_states, reverse)
        return self._forward_ref(hidden_states, reverse)

    def _forward_cuda(self, hidden_states):
        """mamba_ssm.Mamba's forward (no inference cache) on mamba-ssm's functions."""
        ops = mamba_ssm_ops()
        batch, seqlen, _ = hidden_states.shape
        # xz laid out (B, 2 Di, L) with unit stride in time, as mamba-ssm builds it
        xz = self.in_proj.weight @ hidden_states.reshape(-1, self.d_model).t()
        xz = xz.view(-1, batch, seqlen).transpose(0, 1)  # [B, 2*Di, L]
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # [Di, S]
        if ops["mamba_inner_fn"] is not None and ops["causal_conv1d_fn"] is not None:
            return ops["mamba_inner_fn"](
                xz,
                self.conv1d.weight,
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.out_proj.weight,
                self.out_proj.bias,
                A,
                None,
                None,
                self.D.float(),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            )  # [B, L, N]
        x, z = xz.chunk(2, dim=1)  # [B, Di, L] each
        if ops["causal_conv1d_fn"] is not None:
            x = ops["causal_conv1d_fn"](
                x=x, weight=self.conv1d.weight.squeeze(1), bias=self.conv1d.bias, activation="silu"
            )
        else:
            x = F.silu(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, -1))  # [(B L), R + 2S]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(-1, batch, seqlen).transpose(0, 1)
        B = B.view(batch, seqlen, -1).transpose(1, 2).contiguous()  # [B, S, L]
        C = C.view(batch, seqlen, -1).transpose(1, 2).contiguous()
        y = ops["selective_scan_fn"](
            x,
            dt,
            A,
            B,
            C,
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # [B, Di, L]
        return self.out_proj(y.transpose(1, 2))

    def _inner_params(self):
        """The tensors of the inner path, in the order the ops take them."""
        return (
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.dt_proj.bias,
            self.A_log,
            self.D,
        )

    def _forward_fused(self, hidden_states, reverse):
        """The fused CPU kernels: with autograd on the inner path, else the whole mixer."""
        if self._int8 is None and (
            torch.is_grad_enabled()
            and (hidden_states.requires_grad or any(p.requires_grad for p in self.parameters()))
        ):
            xz = self.in_proj(hidden_states)  # [B, L, 2 * Di]
            y = mamba_inner_cpu(xz, *self._inner_params(), reverse=reverse, inplace=True)
            return self.out_proj(y)  # [B, L, N]
        w_in, b_in, w_out, b_out = self._projections()
        return mamba_mixer_inference_cpu(
            hidden_states, w_in, b_in, *self._inner_params(), w_out, b_out, reverse=reverse
        )  # [B, L, N]

    def _forward_ref(self, hidden_states, reverse):
        """The step-by-step PyTorch path (any device, dtype and backend)."""
        x = hidden_states.flip(1) if reverse else hidden_states
        w_in, b_in, w_out, b_out = self._projections()
        xz = linear(x, w_in, b_in)  # [B, L, 2 * Di]
        y = mamba_inner_ref(xz, *self._inner_params(), backend=self.ssm_backend)
        y = linear(y, w_out, b_out)  # [B, L, N]
        return y.flip(1) if reverse else y

    def allocate_chunk_state(self, batch_size, device=None):
        """Zero states for :meth:`forward_chunk` (the kernels' time-major layout).

        Arguments
        ---------
        batch_size : int
            Number of streams.
        device : torch.device, optional
            Defaults to the parameters' device.

        Returns
        -------
        dict
            ``hist`` [B, d_conv - 1, Di] and ``ssm`` [B, d_state, Di],
            float32: the convolution's last inputs and the scan's state;
            on the fused CPU path also ``kernel``, the weights in the
            kernels' layout, taken now (allocate again after changing them).
        """
        device = device or self.in_proj.weight.device
        state = {
            "hist": torch.zeros(batch_size, self.d_conv - 1, self.d_inner, device=device),
            "ssm": torch.zeros(batch_size, self.d_state, self.d_inner, device=device),
            "kernel": None,
        }
        if self.uses_fused_path(state["ssm"]):
            with torch.no_grad():
                w_in, b_in, w_out, b_out = self._projections()
                w = [
                    t if t is None or isinstance(t, PackedLinear) else t.detach().contiguous()
                    for t in (
                        w_in,
                        b_in,
                        self.conv1d.weight.reshape(self.d_inner, -1),
                        self.conv1d.bias,
                        self.x_proj.weight,
                        self.dt_proj.weight,
                        self.dt_proj.bias,
                        -torch.exp(self.A_log),
                        self.D,
                        w_out,
                        b_out,
                    )
                ]
            state["kernel"] = tuple(w)
        return state

    def forward_chunk(self, hidden_states, chunk_state):
        """Mix the next frames of a stream, continuing from ``chunk_state``.

        The frames go through as one sequence (a scan from the carried state,
        not a Python loop over frames) on the fused CPU kernels or the
        PyTorch path; mamba-ssm's kernel takes no initial state, so the
        ``cuda`` backend runs :meth:`step` frame by frame. Feeding a sequence
        in pieces gives :meth:`forward` of the whole sequence.

        Arguments
        ---------
        hidden_states : torch.Tensor
            [B, L, N], the next L frames (L >= 1).
        chunk_state : dict
            From :meth:`allocate_chunk_state`, updated in place.

        Returns
        -------
        torch.Tensor
            [B, L, N].

        Example
        -------
        >>> m = Mamba(d_model=8, d_state=4).eval()
        >>> x = torch.randn(2, 30, 8)
        >>> st = m.allocate_chunk_state(2)
        >>> with torch.no_grad():
        ...     y = torch.cat([m.forward_chunk(x[:, :7], st), m.forward_chunk(x[:, 7:], st)], 1)
        ...     torch.allclose(y, m(x), atol=1e-5)
        True
        >>> y.shape
        torch.Size([2, 30, 8])
        """
        hist, ssm, kernel = chunk_state["hist"], chunk_state["ssm"], chunk_state["kernel"]
        if (
            kernel is not None
            and hidden_states.dtype == torch.float32
            and not torch.is_grad_enabled()
        ):
            return mamba_mixer_chunk_cpu(hidden_states, *kernel, hist, ssm)  # [B, L, N]
        if resolve_backend(self.ssm_backend, hidden_states.device) == "cuda":
            return self._chunk_by_steps(hidden_states, hist, ssm)
        w_in, b_in, w_out, b_out = self._projections()
        xz = linear(hidden_states, w_in, b_in)  # [B, L, 2 * Di]
        y = mamba_inner_ref(
            xz, *self._inner_params(), backend=self.ssm_backend, hist=hist, state=ssm
        )
        return linear(y, w_out, b_out)  # [B, L, N]

    def _chunk_by_steps(self, hidden_states, hist, ssm):
        """:meth:`forward_chunk` as one :meth:`step` per frame (the cuda path)."""
        dtype = self.in_proj.weight.dtype
        conv_state = F.pad(hist.transpose(1, 2), (1, 0)).to(dtype).contiguous()
        ssm_state = ssm.transpose(1, 2).contiguous()  # [B, Di, S]
        out = [
            self.step(hidden_states[:, t : t + 1], conv_state, ssm_state)[0]
            for t in range(hidden_states.shape[1])
        ]
        hist.copy_(conv_state[..., 1:].transpose(1, 2))
        ssm.copy_(ssm_state.transpose(1, 2))
        return torch.cat(out, dim=1)  # [B, L, N]

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
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
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
            x = ops["causal_conv1d_update"](
                x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu"
            )
        else:
            conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
            conv_state[:, :, -1] = x
            x = (conv_state * self.conv1d.weight.squeeze(1)).sum(-1)  # [B, Di]
            if self.conv1d.bias is not None:
                x = x + self.conv1d.bias
            x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())  # [Di, S]
        if ops.get("selective_state_update") is not None:
            y = ops["selective_state_update"](
                ssm_state,
                x,
                F.linear(dt, self.dt_proj.weight),
                A,
                B,
                C,
                self.D,
                z=z,
                dt_bias=self.dt_proj.bias,
                dt_softplus=True,
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
