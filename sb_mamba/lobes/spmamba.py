"""SPMamba: TF-GridNet with its BLSTMs replaced by bidirectional Mamba.

Li, Chen, Yang and Hu, "SPMamba: State-space model is all you need in speech
separation", arXiv 2404.02063 (https://arxiv.org/abs/2404.02063), ICME 2025.

The mixture is normalised by its standard deviation and turned into a
complex STFT (Hann, ``center=True``). A 3x3 convolution embeds the real and
imaginary parts into ``emb_dim`` channels; ``num_layers`` blocks each run

1. an intra-frame (frequency) path: channel LayerNorm, unfold ``emb_ks``
   neighbouring bins (hop ``emb_hs``), BiMamba with concatenated directions,
   ConvTranspose1d back to ``emb_dim`` channels, residual;
2. an inter-frame (time) path: the same along frames;
3. TF-GridNet's full-band self-attention over frames, residual.

A 3x3 transposed convolution maps to the real and imaginary parts of each
speaker's spectrum (spectral mapping, no mask), which the iSTFT turns back
into waveforms at the mixture's scale.

Submodule names follow ``JusperLee/SPMamba:look2hear/models/SPMamba.py``
(``conv``, ``blocks.{i}.intra_norm/intra_mamba/intra_linear/inter_*``,
``attn_conv_{Q,K,V}_{h}``, ``attn_concat_proj``, ``deconv``; norms hold
``gamma``/``beta``; Mamba blocks ``forward_blocks.0.{norm,mixer}.*``) with the
same shapes, so a released state_dict should map by stripping its wrapper
prefix (checked against the original code, not against a released file).

Authors
-------
 * sb_mamba developers
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_mamba.lobes.base import ModelArgsMixin
from sb_mamba.nnet.bimamba import BiMamba


def stft_analysis(wav, n_fft, hop_length):
    """Complex one-sided STFT as SPMamba's encoder, always in float32.

    Hann window of ``n_fft`` samples, ``center=True`` with reflect padding.
    Signals of at most ``n_fft // 2`` samples (too short to reflect-pad) are
    zero-padded first; :func:`stft_synthesis` trims them back.

    Arguments
    ---------
    wav : torch.Tensor
        [B, T] waveforms.
    n_fft : int
        FFT size (= window length).
    hop_length : int
        Hop between frames.

    Returns
    -------
    torch.Tensor
        [B, n_fft // 2 + 1, 1 + T' // hop_length], complex64.

    Example
    -------
    >>> stft_analysis(torch.randn(2, 1000), 256, 64).shape
    torch.Size([2, 129, 16])
    """
    with torch.autocast(device_type=wav.device.type, enabled=False):
        wav = wav.float()
        if wav.shape[-1] <= n_fft // 2:
            wav = F.pad(wav, (0, n_fft // 2 + 1 - wav.shape[-1]))
        window = torch.hann_window(n_fft, device=wav.device)
        return torch.stft(
            wav,
            n_fft,
            hop_length,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )


def stft_synthesis(spec, n_fft, hop_length, length):
    """Inverse of :func:`stft_analysis`, always in float32.

    Arguments
    ---------
    spec : torch.Tensor
        [B, n_fft // 2 + 1, N] complex spectra.
    n_fft : int
        FFT size (= window length).
    hop_length : int
        Hop between frames.
    length : int
        Number of samples T to return.

    Returns
    -------
    torch.Tensor
        [B, T] float32 waveforms.

    Example
    -------
    >>> x = torch.randn(2, 999)
    >>> y = stft_synthesis(stft_analysis(x, 256, 64), 256, 64, 999)
    >>> y.shape, bool(torch.allclose(x, y, atol=1e-5))
    (torch.Size([2, 999]), True)
    """
    with torch.autocast(device_type=spec.device.type, enabled=False):
        spec = spec.to(torch.complex64)
        window = torch.hann_window(n_fft, device=spec.device)
        n_out = max(length, n_fft // 2 + 1)
        wav = torch.istft(spec, n_fft, hop_length, window=window, center=True, length=n_out)
        return wav[..., :length]


class LayerNormalization4D(nn.Module):
    """LayerNorm over channels of a [B, C, T, F] map (per T-F bin).

    Arguments
    ---------
    num_channels : int
        Channels C; ``gamma`` and ``beta`` are [1, C, 1, 1].
    eps : float
        Added to the variance.

    Example
    -------
    >>> LayerNormalization4D(8)(torch.randn(2, 8, 5, 7)).shape
    torch.Size([2, 8, 5, 7])
    """

    def __init__(self, num_channels, eps=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.eps = eps
        self.stat_dims = (1,)

    def forward(self, x):
        """[B, C, T, F] -> [B, C, T, F]."""
        var, mean = torch.var_mean(x, dim=self.stat_dims, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.gamma + self.beta


class LayerNormalization4DCF(LayerNormalization4D):
    """LayerNorm over channels and frequencies of a [B, C, T, F] map (per frame).

    Arguments
    ---------
    num_channels : int
        Channels C.
    num_freqs : int
        Frequencies F; ``gamma`` and ``beta`` are [1, C, 1, F].
    eps : float
        Added to the variance.

    Example
    -------
    >>> LayerNormalization4DCF(4, 7)(torch.randn(2, 4, 5, 7)).shape
    torch.Size([2, 4, 5, 7])
    """

    def __init__(self, num_channels, num_freqs, eps=1e-5):
        super().__init__(num_channels, eps)
        self.gamma = nn.Parameter(torch.ones(1, num_channels, 1, num_freqs))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, num_freqs))
        self.stat_dims = (1, 3)


def _conv_act_norm(in_ch, out_ch, num_freqs, eps):
    """1x1 Conv2d -> PReLU -> LayerNormalization4DCF (TF-GridNet attention)."""
    norm = LayerNormalization4DCF(out_ch, num_freqs, eps=eps)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.PReLU(), norm)


class SPMambaBlock(nn.Module):
    """One SPMamba block: intra-frame and inter-frame BiMamba, then attention.

    Arguments
    ---------
    emb_dim : int
        Channels C of the T-F embedding.
    emb_ks : int
        Unfold kernel (neighbouring bins or frames per Mamba token).
    emb_hs : int
        Unfold hop.
    num_freqs : int
        Frequency bins F (sizes the attention LayerNorms).
    attn_heads : int
        Attention heads (must divide ``emb_dim``).
    attn_approx_qk_dim : int
        Query/key size per head is ``ceil(attn_approx_qk_dim / F)`` channels.
    eps : float
        Epsilon of the LayerNorms.
    **mamba_kwargs
        Passed to each Mamba (d_state, d_conv, expand).

    Example
    -------
    >>> blk = SPMambaBlock(4, 8, 1, num_freqs=33, attn_heads=2, d_state=4)
    >>> blk(torch.randn(2, 4, 20, 33)).shape
    torch.Size([2, 4, 20, 33])
    """

    def __init__(
        self,
        emb_dim,
        emb_ks,
        emb_hs,
        num_freqs,
        attn_heads=4,
        attn_approx_qk_dim=512,
        eps=1e-5,
        **mamba_kwargs,
    ):
        super().__init__()
        if emb_dim % attn_heads != 0:
            raise ValueError(f"emb_dim ({emb_dim}) must be divisible by attn_heads ({attn_heads}).")
        self.emb_dim, self.emb_ks, self.emb_hs = emb_dim, emb_ks, emb_hs
        self.attn_heads = attn_heads
        d_model = emb_dim * emb_ks
        # Names as in the original; RMSNorm eps is fixed at 1e-5 there.
        self.intra_norm = LayerNormalization4D(emb_dim, eps=eps)
        self.intra_mamba = BiMamba(
            d_model,
            1,
            merge="concat",
            norm="rmsnorm",
            norm_epsilon=1e-5,
            **mamba_kwargs,
        )
        self.intra_linear = nn.ConvTranspose1d(2 * d_model, emb_dim, emb_ks, emb_hs)
        self.inter_norm = LayerNormalization4D(emb_dim, eps=eps)
        self.inter_mamba = BiMamba(
            d_model,
            1,
            merge="concat",
            norm="rmsnorm",
            norm_epsilon=1e-5,
            **mamba_kwargs,
        )
        self.inter_linear = nn.ConvTranspose1d(2 * d_model, emb_dim, emb_ks, emb_hs)

        qk_dim = math.ceil(attn_approx_qk_dim / num_freqs)
        for h in range(attn_heads):
            for name, ch in (("Q", qk_dim), ("K", qk_dim), ("V", emb_dim // attn_heads)):
                self.add_module(
                    f"attn_conv_{name}_{h}", _conv_act_norm(emb_dim, ch, num_freqs, eps)
                )
        self.attn_concat_proj = _conv_act_norm(emb_dim, emb_dim, num_freqs, eps)

    def _padded(self, n):
        """Smallest length >= n (and >= emb_ks) that the unfold covers exactly."""
        ks, hs = self.emb_ks, self.emb_hs
        return ks + math.ceil(max(n - ks, 0) / hs) * hs

    def _unfold(self, x):
        """[N, C, L] -> [N, L', C * emb_ks] tokens (order of F.unfold)."""
        n, c, _ = x.shape
        x = x.unfold(-1, self.emb_ks, self.emb_hs)  # [N, C, L', ks]
        return x.transpose(1, 2).reshape(n, -1, c * self.emb_ks)

    def _heads(self, name, x):
        """Run the per-head 1x1 convs: [B, C, T, F] -> [B, H, T, C' * F]."""
        out = torch.stack(
            [getattr(self, f"attn_conv_{name}_{h}")(x) for h in range(self.attn_heads)],
            dim=1,
        )  # [B, H, C', T, F]
        return out.transpose(2, 3).flatten(3)  # [B, H, T, C' * F]

    def forward(self, x):
        """[B, C, T, F] -> [B, C, T, F]."""
        B, C, old_T, old_F = x.shape
        T, Fq = self._padded(old_T), self._padded(old_F)
        x = F.pad(x, (0, Fq - old_F, 0, T - old_T))  # [B, C, T, Fq]

        # Intra-frame path: sequences over frequency.
        y = self.intra_norm(x).transpose(1, 2).reshape(B * T, C, Fq)  # [BT, C, Fq]
        y = self.intra_mamba(self._unfold(y))  # [BT, Fq', 2 * C * ks]
        y = self.intra_linear(y.transpose(1, 2))  # [BT, C, Fq]
        x = x + y.view(B, T, C, Fq).transpose(1, 2)  # [B, C, T, Fq]

        # Inter-frame path: sequences over time.
        y = self.inter_norm(x).permute(0, 3, 1, 2).reshape(B * Fq, C, T)  # [BF, C, T]
        y = self.inter_mamba(self._unfold(y))  # [BF, T', 2 * C * ks]
        y = self.inter_linear(y.transpose(1, 2))  # [BF, C, T]
        x = x + y.view(B, Fq, C, T).permute(0, 2, 3, 1)  # [B, C, T, Fq]
        x = x[..., :old_T, :old_F]  # [B, C, T, F]

        # Full-band self-attention over frames, one map per head.
        q, k = self._heads("Q", x), self._heads("K", x)  # [B, H, T, E * F]
        v = self._heads("V", x)  # [B, H, T, (C / H) * F]
        att = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, (C / H) * F]
        att = att.view(B, self.attn_heads, old_T, C // self.attn_heads, old_F)
        att = att.permute(0, 1, 3, 2, 4).reshape(B, C, old_T, old_F)  # [B, C, T, F]
        return x + self.attn_concat_proj(att)  # [B, C, T, F]


class SPMamba(ModelArgsMixin, nn.Module):
    """SPMamba speech separator: mixture [B, T] -> sources [B, T, num_spks].

    Original config names: ``n_srcs`` -> ``num_spks``, ``stride`` ->
    ``hop_length``, ``n_layers`` -> ``num_layers``, ``attn_n_head`` ->
    ``attn_heads``; ``emb_dim``, ``emb_ks``, ``emb_hs``, ``attn_approx_qk_dim``,
    ``eps`` and ``n_fft`` are unchanged. Single-microphone input only
    (``n_imics=1``), PReLU activations, Mamba with RMSNorm as in the original.

    Arguments
    ---------
    num_spks : int
        Number of sources.
    n_fft : int
        FFT size and Hann window length (256 at 8 kHz, 512 at 16 kHz).
    hop_length : int
        STFT hop (64 at 8 kHz, 128 at 16 kHz).
    num_layers : int
        Number of SPMamba blocks.
    emb_dim : int
        Channels of the T-F embedding.
    emb_ks : int
        Unfold kernel; each Mamba sees ``emb_dim * emb_ks`` features.
    emb_hs : int
        Unfold hop.
    attn_heads : int
        Attention heads.
    attn_approx_qk_dim : int
        Approximate query/key size per head (divided by the number of bins).
    eps : float
        Epsilon of the LayerNorms and the GroupNorm.
    d_state : int
        Mamba state size.
    d_conv : int
        Mamba convolution kernel.
    expand : int
        Mamba inner-width factor.

    Example
    -------
    >>> model = SPMamba(num_spks=2, emb_dim=4, num_layers=1, d_state=4)
    >>> model.get_model_args()["n_fft"]  # all constructor arguments, plain values
    256
    >>> model(torch.randn(2, 4001)).shape
    torch.Size([2, 4001, 2])
    """

    def __init__(
        self,
        num_spks=2,
        n_fft=256,
        hop_length=64,
        num_layers=6,
        emb_dim=16,
        emb_ks=8,
        emb_hs=1,
        attn_heads=4,
        attn_approx_qk_dim=512,
        eps=1e-5,
        d_state=16,
        d_conv=4,
        expand=4,
    ):
        super().__init__()
        self.num_spks, self.n_fft, self.hop_length = num_spks, n_fft, hop_length
        self.num_layers = num_layers
        num_freqs = n_fft // 2 + 1

        self.conv = nn.Sequential(
            nn.Conv2d(2, emb_dim, (3, 3), padding=(1, 1)),
            nn.GroupNorm(1, emb_dim, eps=eps),
        )
        self.blocks = nn.ModuleList(
            SPMambaBlock(
                emb_dim,
                emb_ks,
                emb_hs,
                num_freqs,
                attn_heads=attn_heads,
                attn_approx_qk_dim=attn_approx_qk_dim,
                eps=eps,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
            )
            for _ in range(num_layers)
        )
        self.deconv = nn.ConvTranspose2d(emb_dim, 2 * num_spks, (3, 3), padding=(1, 1))

    def forward(self, mix):
        """Separate a batch of mixtures.

        Arguments
        ---------
        mix : torch.Tensor
            [B, T] mixtures.

        Returns
        -------
        torch.Tensor
            [B, T, num_spks] estimated sources, at the mixture's scale.
        """
        if mix.dim() != 2:
            raise ValueError(
                f"SPMamba expects a [batch, time] mixture, got shape "
                f"{tuple(mix.shape)}; add a batch dim with mix.unsqueeze(0) or "
                "downmix multi-channel audio first."
            )
        B, T = mix.shape
        with torch.autocast(device_type=mix.device.type, enabled=False):
            x = mix.float()
            # Std normalisation (unbiased, as the original); guard silence / T=1.
            std = x.std(dim=1, keepdim=True) if T > 1 else torch.ones_like(x)
            std = std.clamp_min(1e-8)  # [B, 1]
            spec = stft_analysis(x / std, self.n_fft, self.hop_length)  # [B, F, N]
        feats = torch.stack([spec.real, spec.imag], 1).transpose(2, 3)  # [B, 2, N, F]
        _, _, N, Fq = feats.shape

        feats = self.conv(feats)  # [B, C, N, F]
        for block in self.blocks:
            feats = block(feats)  # [B, C, N, F]
        out = self.deconv(feats)  # [B, 2 * S, N, F]

        with torch.autocast(device_type=mix.device.type, enabled=False):
            out = out.float().view(B * self.num_spks, 2, N, Fq)  # [BS, 2, N, F]
            est = torch.complex(out[:, 0], out[:, 1]).transpose(1, 2)  # [BS, F, N]
            wav = stft_synthesis(est, self.n_fft, self.hop_length, T)  # [BS, T]
            wav = wav.view(B, self.num_spks, T) * std.unsqueeze(-1)  # [B, S, T]
        return wav.transpose(1, 2).to(mix.dtype)  # [B, T, S]
