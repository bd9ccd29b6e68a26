"""Real-time separation: a causal SepMamba fed chunk by chunk, its states carried.

:class:`StreamingSeparator` (``MambaSeparator.from_hparams(...).stream()``)
takes the mixture as it arrives, in chunks of any size (one sample, a
sound card's period, a second), and returns the separated samples that are
ready after each chunk. It carries every state of a causal SepMamba from one
chunk to the next:

* each strided convolution's left context (the inputs of its next frame);
* each transposed convolution's overlap-add tail (``K - S`` positions);
* each Mamba block's depthwise-convolution inputs and SSM state; a chunk's
  frames go through every block as one sequence
  (:meth:`~sb_mamba.nnet.mamba.Mamba.forward_chunk`: a scan from the
  carried state on the fused CPU kernels or the PyTorch scan);
* the skip frames and encoder features that wait for the up stages.

:meth:`~StreamingSeparator.flush` ends the stream as the offline model ends a
signal (zero padding to :meth:`~sb_mamba.lobes.sepmamba.SepMamba.padded_length`,
the up stages' right padding), so the concatenated outputs equal the model's
``forward`` on the whole signal (to float rounding), whatever the chunking.

Output sample ``t`` is ready once the input reaches ``t + lookahead(t)``
(:func:`~sb_mamba.lobes.sepmamba.causal_lookahead` is the worst case: 315
samples, 39.4 ms at 8 kHz, for kernel 16 / stride 4 / 3 levels; 147 for
kernel 8). Only a causal SepMamba streams (``causal: True``); any other
model is refused with a :class:`~sb_mamba.errors.UserError`.

Authors
-------
 * sb_mamba developers
"""

import torch
import torch.nn.functional as F

from sb_mamba.errors import UserError
from sb_mamba.lobes.sepmamba import SepMamba


class _StridedConv:
    """A strided Conv1d over a stream: the inputs of its next frames are kept."""

    def __init__(self, conv, buf):
        self.weight, self.bias = conv.weight, conv.bias
        self.K, self.S = conv.kernel_size[0], conv.stride[0]
        self.buf = buf  # [B, C_in, n]: the inputs from the next frame's first on

    def push(self, x):
        """x [B, C_in, m] new inputs -> [B, C_out, n] the frames now complete."""
        buf = torch.cat([self.buf, x], dim=-1) if self.buf.shape[-1] else x
        n = (buf.shape[-1] - self.K) // self.S + 1 if buf.shape[-1] >= self.K else 0
        self.buf = buf[..., n * self.S :]
        return (
            F.conv1d(buf[..., : (n - 1) * self.S + self.K], self.weight, self.bias, self.S)
            if n
            else buf.new_zeros(buf.shape[0], self.weight.shape[0], 0)
        )


class _OverlapAdd:
    """A ConvTranspose1d over a stream: the ``K - S`` positions that later
    frames still add to are carried (without the bias, added once at the end)."""

    def __init__(self, convt):
        self.weight, self.bias = convt.weight, convt.bias
        self.K, self.S = convt.kernel_size[0], convt.stride[0]
        self.tail = None  # [B, C_out, K - S]
        # few output channels (the decoder): a product and a fold, several
        # times faster than PyTorch's CPU conv_transpose1d there
        c_in, c_out = self.weight.shape[:2]
        self.cols = self.weight.detach().reshape(c_in, -1).T.contiguous() if c_out <= 4 else None

    def push(self, x):
        """x [B, C_in, m] new frames -> [B, C_out, m * S] the positions now complete."""
        m = x.shape[-1]
        if self.tail is None:
            self.tail = x.new_zeros(x.shape[0], self.weight.shape[1], self.K - self.S)
        if m == 0:
            return x.new_zeros(x.shape[0], self.weight.shape[1], 0)
        if self.cols is None:
            y = F.conv_transpose1d(x, self.weight, None, self.S)  # [B, C_out, (m-1)S + K]
        else:  # the same as an overlap-add of each frame's K outputs
            y = F.fold(
                self.cols @ x, (1, (m - 1) * self.S + self.K), (1, self.K), stride=(1, self.S)
            ).view(x.shape[0], -1, (m - 1) * self.S + self.K)
        y[..., : self.K - self.S] += self.tail
        self.tail = y[..., m * self.S :]
        return y[..., : m * self.S] + self.bias[:, None]

    def finish(self):
        """The positions after the last frame: [B, C_out, K - S] (with the bias)."""
        return self.tail + self.bias[:, None]


def _mix(layer, x, state):
    """A causal Mamba layer on the next frames: [B, C, n] -> [B, C, n]."""
    if x.shape[-1] == 0:
        return x
    return layer.forward_chunk(x.transpose(1, 2), state).transpose(1, 2)


class StreamingSeparator:
    """Separate a live mixture chunk by chunk with a causal SepMamba.

    Arguments
    ---------
    model : SepMamba
        A causal SepMamba (``causal=True``), in eval mode or not (it is
        only read); any other model raises :class:`~sb_mamba.errors.UserError`.
    sample_rate : int, optional
        The model's rate in Hz (for :meth:`latency_ms`); 8000 by default.

    Attributes
    ----------
    lookahead : int
        Worst-case future input samples an output sample waits for.
    frame : int
        Input samples per bottleneck frame (``stride ** num_levels``): the
        chunk size with the least compute per sample.

    Example
    -------
    >>> net = SepMamba(num_spks=2, dim=8, num_blocks=1, d_state=4, stride=4,
    ...                causal=True).eval()
    >>> mix = torch.randn(1000)
    >>> stream = StreamingSeparator(net)
    >>> parts = [stream.feed(mix[a:a + 64]) for a in range(0, 1000, 64)]
    >>> est = torch.cat(parts + [stream.flush()])
    >>> with torch.no_grad():
    ...     torch.allclose(est, net(mix[None])[0], rtol=1e-4, atol=1e-5)
    True
    >>> est.shape
    torch.Size([1000, 2])
    """

    def __init__(self, model, sample_rate=8000):
        if not isinstance(model, SepMamba):
            raise UserError(
                f"Streaming needs a causal SepMamba; this model is a "
                f"{type(model).__name__}, which reads the whole signal: use "
                "`sb-mamba separate` (offline) for it."
            )
        if not model.causal:
            raise UserError(
                "This SepMamba is not causal (bidirectional Mamba layers read "
                "the future), so it cannot stream: train one with `causal: True` "
                "(recipe override --model_causal=True, or "
                "hparams/models/sepmamba_causal_s.yaml) or separate offline."
            )
        if model.kernel_size < model.stride:
            raise UserError(
                f"Streaming needs kernel_size >= stride, got {model.kernel_size} < {model.stride}."
            )
        self.model, self.sample_rate = model, int(sample_rate)
        self.num_spks = model.num_spks
        self.lookahead = model.lookahead
        self.frame = model.stride**model.num_levels
        self.reset()

    def reset(self):
        """Forget the stream: the next :meth:`feed` starts a new one."""
        m = self.model
        p = m.decoder.weight
        empty = p.new_zeros(1, 1, 0)
        self._down = [
            _StridedConv(s.conv, empty.new_zeros(1, s.conv.in_channels, 0)) for s in m.down
        ]
        self._down_state = [s.mamba.allocate_chunk_state(1, p.device) for s in m.down]
        self._up = [_OverlapAdd(s.convt) for s in m.up]
        self._up_state = [s.mamba.allocate_chunk_state(1, p.device) for s in m.up]
        self._decoder = _OverlapAdd(m.decoder)
        # frames waiting for the up stages: level i's skips, the encoder features
        self._skips = [empty.new_zeros(1, s.conv.out_channels, 0) for s in m.down[:-1]]
        self._feats = empty.new_zeros(1, m.down[0].conv.out_channels, 0)
        self.samples_in = self.samples_out = 0

    def latency_ms(self, chunk):
        """Algorithmic latency bound in ms for chunks of ``chunk`` samples:
        the look-ahead plus the chunk (compute time not included)."""
        return 1000.0 * (self.lookahead + chunk) / self.sample_rate

    @torch.inference_mode()
    def feed(self, chunk):
        """Take the next samples of the mixture; return the outputs now ready.

        Arguments
        ---------
        chunk : torch.Tensor or numpy.ndarray
            [n] mixture samples at the model rate (any n >= 0).

        Returns
        -------
        torch.Tensor
            [n_ready, num_spks] float32: the separated samples that follow
            the ones returned before (possibly none).
        """
        x = self._as_input(chunk)
        self.samples_in += x.shape[-1]
        return self._emit(self._decode(self._push(x)))

    @torch.inference_mode()
    def flush(self):
        """End the stream: return the remaining outputs and reset.

        The input is ended as the offline model ends a signal (zero padding
        to its padded length), so all outputs, concatenated, equal the
        model's ``forward`` on the whole input.

        Returns
        -------
        torch.Tensor
            [n, num_spks]: the outputs up to the last input sample.
        """
        T = self.samples_in
        if T == 0:
            self.reset()
            return torch.zeros(0, self.num_spks)
        pad = self.model.padded_length(T) - T
        w = self._decoder.weight
        parts = [self._decode(self._push(w.new_zeros(1, 1, pad)))]
        x = None  # the frames that each up stage's right end adds to the next level
        for j, stage in enumerate(self.model.up):  # the up stages' right ends
            level, convt = len(self.model.up) - 1 - j, self._up[j]
            x = w.new_zeros(1, stage.convt.in_channels, 0) if x is None else x
            skip = self._skips[level]
            up = torch.cat([convt.push(x), convt.finish()], dim=-1)[..., : skip.shape[-1]]
            up = F.pad(stage.act(up), (0, skip.shape[-1] - up.shape[-1]))
            self._skips[level] = skip[..., :0]
            x = self._fuse(j, skip, up)
        if x is not None:
            parts.append(self._decode(x))
        tail = self._decoder.finish()
        parts.append(tail.reshape(1, self.num_spks, tail.shape[-1]))
        est = torch.cat(parts, dim=-1)[..., : T - self.samples_out]
        out = self._emit(est)
        self.reset()
        return out

    def separate(self, mix, chunk=None):
        """Stream a whole signal through :meth:`feed` (chunks of ``chunk``
        samples, default :attr:`frame`) and :meth:`flush`: [T] -> [T, num_spks].

        Example
        -------
        >>> net = SepMamba(dim=8, num_blocks=1, d_state=4, causal=True).eval()
        >>> StreamingSeparator(net).separate(torch.randn(500), chunk=7).shape
        torch.Size([500, 2])
        """
        mix = self._as_input(mix)[0, 0]
        chunk = int(chunk or self.frame)
        self.reset()
        parts = [self.feed(mix[a : a + chunk]) for a in range(0, mix.shape[0], chunk)]
        return torch.cat(parts + [self.flush()])

    # ---------------------------------------------------------------- internals
    def _as_input(self, chunk):
        x = torch.as_tensor(chunk).to(self._decoder.weight.device, torch.float32)
        if x.dim() != 1:
            raise UserError(f"feed() takes one mono chunk [n], got shape {tuple(x.shape)}.")
        return x.reshape(1, 1, -1)  # [1, 1, n]

    def _push(self, x):
        """New input samples [1, 1, n] -> the new up-path frames of level 0."""
        m, outs = self.model, []
        for i, stage in enumerate(m.down):
            e = stage.act(self._down[i].push(x))  # [1, C_i, n_i] new encoder frames
            if i == 0 and m.output == "mask":
                self._feats = torch.cat([self._feats, e], dim=-1)
            x = _mix(stage.mamba, e, self._down_state[i])  # [1, C_i, n_i]
            outs.append(x)
        for j in range(len(m.up)):  # up[j]: level L-1-j -> level L-2-j
            level = len(m.up) - 1 - j
            skips = torch.cat([self._skips[level], outs[level]], dim=-1)
            up = m.up[j].act(self._up[j].push(x))  # [1, C, n] positions now complete
            n = up.shape[-1]
            self._skips[level] = skips[..., n:]
            x = self._fuse(j, skips[..., :n], up)
        return x

    def _fuse(self, j, skip, up):
        """Up stage ``j`` after its transposed convolution: cat -> 1x1 -> act -> Mamba."""
        if up.shape[-1] == 0:
            return up
        stage = self.model.up[j]
        x = stage.act(stage.fusion(torch.cat([skip, up], dim=1)))  # [1, C, n]
        return _mix(stage.mamba, x, self._up_state[j])

    def _decode(self, x):
        """Level-0 frames [1, C, n] -> [1, num_spks, n * S] output samples."""
        m = self.model
        if m.output != "mask":
            return self._decoder.push(x)
        n, C = x.shape[-1], x.shape[1]
        if n == 0:
            return x.new_zeros(1, self.num_spks, 0)
        feats, self._feats = self._feats[..., :n], self._feats[..., n:]
        masks = F.relu(m.mask_head(x)).view(1, self.num_spks, C, n)
        est = self._decoder.push((masks * feats[:, None]).view(self.num_spks, C, n))
        return est.view(1, self.num_spks, est.shape[-1])

    def _emit(self, est):
        """[1, num_spks, n] -> [n, num_spks] on the CPU, counted."""
        self.samples_out += est.shape[-1]
        return est[0].T.float().cpu()
