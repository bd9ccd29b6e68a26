"""SepMamba: a time-domain U-Net of bidirectional Mamba layers.

Avenstrup et al., "SepMamba: State-space models for speaker separation using
Mamba", ICASSP 2025, https://arxiv.org/abs/2410.20997. The layer order and
the bias / activation details follow the released code
(``itsmeeandrew/SepMamba``, ``src/models/SepMamba.py`` and
``SepMambaCausal.py``); this is an independent re-implementation on
:class:`sb_mamba.nnet.bimamba.BiMamba`, which runs on CPU, MPS and CUDA.

Where the sources disagree:

* the released classes default to ``kernel_sizes=[12, 12, 12]`` and
  ``num_blocks=3`` (``6`` causal), but the shipped configs and the paper use
  16 / 4 (8 causal) for SepMamba-S; we default to the configs.
* the paper rounds the sizes to 7.2M (S) and 22M (M); the architecture has
  7.25M and 22.25M parameters.
* the released decoder always emits 2 sources; here it has ``num_spks``.
* the released ``UpSample.pad`` builds its zero pad with ``.cuda()``; here the
  pad follows the input's device and dtype.
* "causal" in the released code (kept here) means unidirectional Mamba only:
  the strided convolutions are not causally padded, so each output sample
  sees a bounded number of future samples (:attr:`SepMamba.lookahead`,
  105 samples = 13.1 ms at 8 kHz for the default layout).

Authors
-------
 * sb_mamba developers
"""

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_mamba.lobes.base import ModelArgsMixin
from sb_mamba.nnet.bimamba import BiMamba

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish, "prelu": nn.PReLU}


def _mamba_layer(dim, num_blocks, causal, mamba_kwargs):
    """One SepMamba Mamba layer on ``dim`` channels ([B, L, dim] -> same)."""
    if causal:  # forward stack only, twice as deep: same parameter count
        return BiMamba(dim, 2 * num_blocks, bidirectional=False, **mamba_kwargs)
    return BiMamba(dim, num_blocks, bidirectional=True, merge="sum", **mamba_kwargs)


class _DownStage(nn.Module):
    """Strided Conv1d (no padding, with bias) -> activation -> Mamba layer."""

    def __init__(self, c_in, c_out, kernel_size, stride, activation, layer):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride)
        self.act = ACTIVATIONS[activation]()
        self.mamba = layer

    def encode(self, x):
        """[B, C_in, L] -> [B, C_out, (L - K) // S + 1]: the strided convolution."""
        return self.act(self.conv(x))

    def mix(self, x):
        """[B, C, L] -> [B, C, L]: the Mamba layer."""
        # one contiguous copy: the Mamba stacks read x several times
        x = x.transpose(1, 2).contiguous()  # [B, L, C]
        return self.mamba(x).transpose(1, 2)  # [B, C, L]

    def forward(self, x):
        """[B, C_in, L] -> [B, C_out, (L - K) // S + 1]."""
        return self.mix(self.encode(x))


class _UpStage(nn.Module):
    """ConvTranspose1d -> act -> pad to skip -> cat [skip, up] -> 1x1 -> act -> Mamba.

    As in the released code one activation module serves both places (this
    matters only for ``prelu``, whose slope is then shared).
    """

    def __init__(self, c_in, c_out, kernel_size, stride, activation, layer):
        super().__init__()
        self.convt = nn.ConvTranspose1d(c_in, c_out, kernel_size, stride=stride)
        self.fusion = nn.Conv1d(2 * c_out, c_out, kernel_size=1)
        self.act = ACTIVATIONS[activation]()
        self.mamba = layer

    def forward(self, x, skip):
        """x [B, C_in, L], skip [B, C_out, L_skip] -> [B, C_out, L_skip]."""
        x = self.act(self.convt(x))  # [B, C_out, (L - 1) * S + K]
        x = F.pad(x, (0, skip.shape[-1] - x.shape[-1]))  # [B, C_out, L_skip]
        x = self.fusion(torch.cat([skip, x], dim=1))  # [B, C_out, L_skip]
        x = self.act(x).transpose(1, 2).contiguous()  # [B, L_skip, C_out]
        return self.mamba(x).transpose(1, 2)  # [B, C_out, L_skip]


def min_input_length(kernel_size, stride, num_levels):
    """Shortest length the U-Net accepts (one frame at the bottleneck).

    Arguments
    ---------
    kernel_size : int
        Kernel of the strided convolutions.
    stride : int
        Their stride.
    num_levels : int
        Number of down stages.

    Returns
    -------
    int
        Minimum number of input samples (106 for 16 / 2 / 3).

    Example
    -------
    >>> min_input_length(16, 2, 3)
    106
    """
    n = 1
    for _ in range(num_levels):
        n = stride * (n - 1) + kernel_size
    return n


def causal_lookahead(kernel_size, stride, num_levels):
    """Worst-case look-ahead, in samples, of the causal U-Net.

    With causal Mamba layers, frame ``j`` of down level ``i`` (stride
    ``S**i``) has read the input up to sample ``S**i * j + R_i`` with
    ``R_i = (K - 1) * (1 + S + ... + S**(i-1))``. Output ``n`` of a
    transposed convolution reads input frames ``<= n // S``, and each up
    stage also reads its skip frame ``n``; the decoder output ``t`` thus
    reads the input up to ``f_1(t // S)`` where
    ``f_L(m) = S**L * m + R_L`` and ``f_i(n) = max(f_{i+1}(n // S),
    S**i * n + R_i)``. The look-ahead ``f_1(t // S) - t`` is periodic in
    ``t`` with period ``S**L``; this returns its maximum, reached at
    ``t % S**L == 0`` (it falls to ``lookahead - S**L + 1`` in between).

    Arguments
    ---------
    kernel_size, stride, num_levels : int
        The U-Net's layout, as in :func:`min_input_length`.

    Returns
    -------
    int
        Future samples that can influence an output sample.

    Example
    -------
    >>> causal_lookahead(16, 2, 3)  # 105 samples = 13.1 ms at 8 kHz
    105
    """
    K, S, L = kernel_size, stride, num_levels
    reach = [0]
    for i in range(L):
        reach.append(reach[-1] + S**i * (K - 1))

    def last_seen(level, n):  # last input sample read by decoder-side frame n
        if level == L:
            return S**L * n + reach[L]
        return max(last_seen(level + 1, n // S), S**level * n + reach[level])

    return max(last_seen(1, t // S) - t for t in range(S**L))


class SepMamba(ModelArgsMixin, nn.Module):
    """SepMamba separator: mixture waveform in, source waveforms out.

    Down stage ``i`` (``i = 0 .. num_levels-1``, ``dim * 2**i`` channels):
    Conv1d(K, S, no padding) -> activation -> Mamba layer. Up stages mirror
    all but the bottleneck: ConvTranspose1d (channels halve) -> activation ->
    right zero-pad to the skip length -> concat [skip, up] -> 1x1 Conv1d ->
    activation -> Mamba layer. The skips are the down stages' outputs. A last
    ConvTranspose1d(dim -> num_spks) gives the sources directly (no mask, no
    output nonlinearity). All convolutions have a bias.

    A Mamba layer is two stacks of ``num_blocks`` pre-LayerNorm Mamba blocks,
    over time and over reversed time, summed. With ``causal=True`` it is one
    forward stack of ``2 * num_blocks`` blocks (same parameter count), and
    :attr:`lookahead` future samples can reach each output (see
    :func:`causal_lookahead`); the bidirectional model sees the whole input.

    Inputs of any length are right-padded with zeros to the nearest length
    the U-Net maps onto itself (even, >= 106 for the defaults) and the output
    is trimmed back; a 4 s, 8 kHz input (32000 samples) needs no padding.

    Arguments
    ---------
    num_spks : int
        Number of output sources.
    dim : int
        Channels of the first level (64 for S, 128 for M).
    num_blocks : int
        Mamba blocks per direction per layer (4 for S, 3 for M).
    kernel_size : int
        Kernel of the strided (transposed) convolutions.
    stride : int
        Their stride.
    num_levels : int
        Down stages (the bottleneck has ``dim * 2**(num_levels-1)`` channels).
    causal : bool
        Unidirectional Mamba with ``2 * num_blocks`` blocks per layer.
    activation : str
        ``"relu"``, ``"silu"``, ``"mish"`` or ``"prelu"``.
    d_state, d_conv, expand : int
        Mamba state size, depthwise-conv kernel and expansion.
    output : str
        ``"mapping"`` (the paper's): the last transposed convolution emits
        the sources. ``"mask"`` (not in the paper; a Conv-TasNet-style
        head): a 1x1 convolution and a ReLU turn the U-Net's output into
        ``num_spks`` masks on the first level's encoder features
        (``ReLU(conv(mix))``), and one shared transposed convolution decodes
        each masked copy. Its state_dict has ``mask_head`` and a one-source
        ``decoder``, so official weights load into ``"mapping"`` only.

    Attributes
    ----------
    lookahead : int or None
        Future input samples that can change an output sample: 105 for the
        default causal layout, ``None`` (the whole input) when bidirectional.
    min_length : int
        Shortest input the U-Net takes without padding (106 by default).

    Example
    -------
    >>> model = SepMamba(num_spks=2, dim=8, num_blocks=1, d_state=4)
    >>> args = model.get_model_args()  # all constructor arguments, plain values
    >>> args["dim"], args["kernel_size"]
    (8, 16)
    >>> SepMamba(**args).load_state_dict(model.state_dict())
    <All keys matched successfully>
    >>> est = model(torch.randn(3, 1001))
    >>> est.shape
    torch.Size([3, 1001, 2])
    """

    def __init__(
        self,
        num_spks=2,
        dim=64,
        num_blocks=4,
        kernel_size=16,
        stride=2,
        num_levels=3,
        causal=False,
        activation="relu",
        d_state=16,
        d_conv=4,
        expand=2,
        output="mapping",
    ):
        super().__init__()
        if output not in ("mapping", "mask"):
            raise ValueError(f"output must be 'mapping' or 'mask', got {output!r}.")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
            )
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}.")
        self.num_spks, self.causal = num_spks, causal
        self.kernel_size, self.stride, self.num_levels = kernel_size, stride, num_levels
        mamba_kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand)
        widths = [dim * 2**i for i in range(num_levels)]

        def layer(c):
            return _mamba_layer(c, num_blocks, causal, mamba_kwargs)

        self.down = nn.ModuleList(
            _DownStage(c_in, c, kernel_size, stride, activation, layer(c))
            for c_in, c in zip([1] + widths[:-1], widths)
        )
        self.up = nn.ModuleList(
            _UpStage(c_in, c, kernel_size, stride, activation, layer(c))
            for c_in, c in zip(widths[:0:-1], widths[-2::-1])
        )
        self.output = output
        if output == "mask":  # one ReLU mask per source on the first level's features
            self.mask_head = nn.Conv1d(dim, num_spks * dim, kernel_size=1)
            self.decoder = nn.ConvTranspose1d(dim, 1, kernel_size, stride=stride)
        else:
            self.decoder = nn.ConvTranspose1d(dim, num_spks, kernel_size, stride=stride)
        self.min_length = min_input_length(kernel_size, stride, num_levels)
        self.lookahead = causal_lookahead(kernel_size, stride, num_levels) if causal else None

    def padded_length(self, length):
        """Length >= ``length`` that the U-Net maps onto itself.

        Arguments
        ---------
        length : int
            Input samples.

        Returns
        -------
        int
            ``L`` with ``L >= min_length`` and ``(L - kernel_size) % stride == 0``.

        Example
        -------
        >>> SepMamba(dim=8, num_blocks=1).padded_length(7999)
        8000
        """
        length = max(length, self.min_length)
        return length + (-(length - self.kernel_size)) % self.stride

    def load_shallower_state_dict(self, state):
        """Load the weights of a SepMamba with fewer Mamba blocks per layer.

        Every weight of ``state`` goes where it was (the blocks of each stack
        keep their places, first to last); each block beyond them starts as
        an identity (:meth:`~sb_mamba.nnet.bimamba.MambaBlock.make_identity`),
        so the deeper model first computes exactly what the shallower one did,
        then trains its new blocks: a trained model grows in depth without
        losing what it learnt (``init_from`` with a larger ``num_blocks``).

        Arguments
        ---------
        state : dict
            A state_dict of a SepMamba with the same arguments except a
            smaller ``num_blocks``.

        Returns
        -------
        list of str
            The blocks that start as identities.

        Example
        -------
        >>> small = SepMamba(dim=8, num_blocks=1, d_state=4, stride=4)
        >>> deep = SepMamba(dim=8, num_blocks=2, d_state=4, stride=4)
        >>> new = deep.load_shallower_state_dict(small.state_dict())
        >>> len(new), new[0]
        (10, 'down.0.mamba.backward_blocks.1')
        >>> x = torch.randn(1, 800)
        >>> torch.allclose(deep(x), small(x), atol=1e-6)
        True
        """
        missing, unexpected = self.load_state_dict(state, strict=False)
        blocks = sorted({re.sub(r"(_blocks\.\d+)\..*", r"\1", k) for k in missing})
        if unexpected or any(not re.search(r"_blocks\.\d+$", b) for b in blocks):
            raise ValueError(
                "Not the weights of a SepMamba that differs only by fewer Mamba blocks: "
                f"unexpected {sorted(unexpected)[:3]}, missing {sorted(missing)[:3]}."
            )
        for name in blocks:
            self.get_submodule(name).make_identity()
        return blocks

    def forward(self, mix):
        """Separate ``mix`` [B, T] into the sources [B, T, num_spks].

        Arguments
        ---------
        mix : torch.Tensor
            [B, T] mixture waveforms, any T >= 1.

        Returns
        -------
        torch.Tensor
            [B, T, num_spks] estimated source waveforms.
        """
        if mix.dim() != 2:
            raise ValueError(
                "SepMamba expects the mixture as [batch, time], got a tensor of "
                f"shape {tuple(mix.shape)}; use mix.squeeze(1) for [B, 1, T] "
                "or mix.unsqueeze(0) for a single [T] waveform."
            )
        T = mix.shape[-1]
        x = F.pad(mix, (0, self.padded_length(T) - T)).unsqueeze(1)  # [B, 1, T']
        feats = self.down[0].encode(x)  # [B, dim, L_0]: the encoder features
        x = self.down[0].mix(feats)
        skips = [x]
        for stage in self.down[1:]:
            x = stage(x)  # [B, C_i, L_i]
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for stage in self.up:
            x = stage(x, skips.pop())  # [B, C_i, L_i]
        if self.output == "mask":
            est = self._masked_decode(feats, x)  # [B, num_spks, T']
        else:
            est = self.decoder(x)  # [B, num_spks, T']
        return est[..., :T].transpose(1, 2)  # [B, T, num_spks]

    def _masked_decode(self, feats, x):
        """Sources as masks on the encoder features ``feats`` (``output="mask"``)."""
        B, C, L = feats.shape
        masks = F.relu(self.mask_head(x)).view(B, self.num_spks, C, L)
        est = self.decoder((masks * feats[:, None]).reshape(B * self.num_spks, C, L))
        return est.view(B, self.num_spks, -1)  # [B, num_spks, T']
