"""Inference with a trained separator: files, tensors and long recordings.

:class:`MambaSeparator` is a SpeechBrain :class:`~speechbrain.inference.
interfaces.Pretrained` over any sb_mamba separator (``forward(mix [B, T])
-> [B, T, num_spks]``), loaded from a hub-layout folder or HuggingFace repo
written by :func:`sb_mamba.inference.export.export_model`. Files are always downmixed
to mono and resampled to the model rate (logged). Long inputs go in chunks
(:func:`chunked_separate`): overlap-add with weights summing to one, each
chunk's speakers matched to the previous chunk's by SI-SNR on the overlap.

Authors
-------
 * sb_mamba developers
"""

import os
import tempfile
from pathlib import Path

import torch
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import AudioError, audio_info, read_audio, write_audio
from sb_mamba.inference.chunking import chunked_separate

logger = get_logger(__name__)

NORMALIZE = ("none", "peak", "mixture")
PEAK = 0.9  # peak of each source with normalize="peak"
AUTO_ONE_PASS_SECONDS = 30.0  # chunk_seconds="auto": one pass up to this length
AUTO_CHUNK_SECONDS = 10.0  # chunk_seconds="auto": chunk length beyond it


def normalize_sources(est, mix, mode="none"):
    """Rescale separated sources.

    ``"none"``: the model's own scale. ``"peak"``: each source to a peak of
    0.9 (SpeechBrain's ``separate_file`` uses 1); silent sources stay silent.
    ``"mixture"``: one gain ``g = <mix, sum> / <sum, sum>`` for all sources,
    the least-squares fit of their sum to the mixture (relative levels kept).

    Arguments
    ---------
    est, mix : torch.Tensor
        [B, T, S] sources and [B, T] mixture.
    mode : str
        ``"none"``, ``"peak"`` or ``"mixture"``.

    Returns
    -------
    torch.Tensor
        [B, T, S] rescaled sources.

    Example
    -------
    >>> mix = torch.randn(1, 800)
    >>> est = torch.stack([mix, mix], -1) / 8
    >>> normalize_sources(est, mix, "mixture").sum(-1).allclose(mix, atol=1e-5)
    True
    >>> normalize_sources(est, mix, "peak").shape
    torch.Size([1, 800, 2])
    """
    if mode not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {mode!r}.")
    if mode == "peak":
        peak = est.abs().amax(dim=1, keepdim=True)  # [B, 1, S]
        return torch.where(peak > 0, est * PEAK / peak.clamp_min(1e-12), est)
    if mode == "mixture":
        total = est.sum(-1)  # [B, T]
        energy = (total**2).sum(-1)  # [B]
        gain = (mix * total).sum(-1) / energy.clamp_min(1e-12)
        gain = torch.where(energy > 0, gain, 1)
        return est * gain[:, None, None]
    return est


def _is_remote(path, savedir):
    """URL, or a HuggingFace ``owner/repo/file`` path when ``savedir`` is set."""
    p = str(path)
    return p.startswith(("http://", "https://")) or (
        savedir is not None and p.count("/") >= 2 and not os.path.exists(p)
        and not p.startswith(("/", ".", "~")))


class MambaSeparator(Pretrained):
    """Separate speech mixtures with a trained sb_mamba separator.

    Load with ``MambaSeparator.from_hparams(source, savedir=..., run_opts={
    "device": "cuda"})`` (a local folder is read in place, offline), or wrap a
    separator directly as below.

    Arguments
    ---------
    modules : dict
        ``{"separator": module}``, ``module(mix [B, T]) -> [B, T, num_spks]``.
    hparams : dict
        With ``sample_rate`` and ``num_spks``.
    run_opts : dict, optional
        ``device``, ``precision`` (``fp32`` | ``bf16`` | ``fp16``), ...

    Example
    -------
    >>> from sb_mamba.lobes.sepmamba import SepMamba
    >>> net = SepMamba(num_spks=2, dim=8, num_blocks=1, d_state=4)
    >>> model = MambaSeparator({"separator": net}, {"sample_rate": 8000,
    ...                         "num_spks": 2}, run_opts={"device": "cpu"})
    >>> model.separate_signal(torch.randn(2001), chunk_seconds=0.2).shape
    torch.Size([1, 2001, 2])
    """

    HPARAMS_NEEDED = ["sample_rate", "num_spks"]
    MODULES_NEEDED = ["separator"]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", **kwargs):
        """Load from a local hub-layout folder or a HuggingFace repo id.

        An existing folder is read locally (SpeechBrain's fetch never goes to
        the network for it, so ``HF_HUB_OFFLINE=1`` works); a path-like
        source (``/``, ``.``, ``~``) that is no folder raises (not a hub id).

        Arguments
        ---------
        source : str or Path
            Folder or ``owner/name`` hub id.
        hparams_file : str
            Inference YAML in ``source``.
        **kwargs : dict
            ``savedir``, ``run_opts``, ``overrides``, ... (SpeechBrain's).
        """
        src = os.path.expanduser(str(source))
        if os.path.isdir(src):
            if not os.path.isfile(os.path.join(src, hparams_file)):
                raise FileNotFoundError(f"{src} has no {hparams_file}: it is not "
                                        "a model folder (see sb-mamba-export).")
            src = os.path.abspath(src)
        elif str(source).startswith(("/", ".", "~")) or src.count("/") > 1:
            raise FileNotFoundError(f"Model folder {src} not found.")
        return super().from_hparams(source=src, hparams_file=hparams_file, **kwargs)

    @property
    def sample_rate(self):
        """Rate of the model's input and output, in Hz."""
        return int(self.hparams.sample_rate)

    @property
    def num_spks(self):
        """Number of sources the model outputs."""
        return int(self.hparams.num_spks)

    def separate_batch(self, mix):
        """[B, T] mixtures at the model rate -> [B, T, num_spks] float32
        sources on the model's device (eval mode, no gradients)."""
        if mix.dim() != 2:
            raise ValueError(f"separate_batch takes [B, T], got {tuple(mix.shape)}.")
        self.mods.eval()
        with torch.no_grad(), self.inference_ctx:
            est = self.mods.separator(mix.to(self.device, torch.float32))
        return est.float()  # [B, T, S]

    forward = separate_batch  # [B, T] -> [B, T, S], as SpeechBrain's interfaces

    def separate_signal(self, mix, chunk_seconds="auto", overlap=0.25, normalize="none"):
        """Separate one mono signal at the model rate, in chunks if asked.

        Arguments
        ---------
        mix : torch.Tensor or numpy.ndarray
            [T] or [1, T], at :attr:`sample_rate`.
        chunk_seconds : float, "auto" or None
            ``None``: one pass. A number: the chunk length of
            :func:`chunked_separate` (bounded memory for long audio).
            ``"auto"``: one pass up to 30 s, 10 s chunks beyond.
        overlap : float
            Least fraction of each chunk shared with the next, in [0, 1).
        normalize : str
            ``"none"``, ``"peak"`` or ``"mixture"`` (:func:`normalize_sources`).

        Returns
        -------
        torch.Tensor
            [1, T, num_spks] on the CPU, same length as ``mix``. An all-zero
            input gives zeros (with a warning).
        """
        mix = torch.as_tensor(mix).detach().float().cpu()
        mix = mix[0] if mix.dim() == 2 and mix.shape[0] == 1 else mix
        if mix.dim() != 1:
            raise ValueError(f"separate_signal takes one mono signal [T] or [1, T], "
                             f"got {tuple(mix.shape)}; average the channels first "
                             "(or use separate_batch for a batch).")
        if mix.numel() == 0 or not torch.isfinite(mix).all():
            raise ValueError("The mixture is empty or has NaN/infinite samples.")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}: {normalize!r}.")
        T, S = mix.shape[0], self.num_spks
        if not mix.abs().max() > 0:
            logger.warning("The mixture is all zeros: returning silent sources.")
            return torch.zeros(1, T, S)
        if chunk_seconds == "auto":
            long = T > AUTO_ONE_PASS_SECONDS * self.sample_rate
            chunk_seconds = AUTO_CHUNK_SECONDS if long else None
        if chunk_seconds is None:
            est = self.separate_batch(mix[None]).cpu()
        else:
            chunk = round(chunk_seconds * self.sample_rate)
            if chunk < 2:
                raise ValueError(f"chunk_seconds={chunk_seconds} is too short.")
            if T > chunk:
                logger.info("Chunked inference: %g s chunks, overlap %g, %.1f s.",
                            chunk_seconds, overlap, T / self.sample_rate)
            est = chunked_separate(self.separate_batch, mix, S, chunk, overlap)[None]
        return normalize_sources(est, mix[None], normalize)

    def separate_file(self, path, savedir=None, chunk_seconds="auto", overlap=0.25,
                      normalize="none", output_dir=None):
        """Separate an audio file of any rate and number of channels: it is
        averaged to mono and resampled to :attr:`sample_rate` (logged), then
        separated with :meth:`separate_signal`.

        Arguments
        ---------
        path : str or Path
            Local file, URL or HuggingFace ``owner/repo/file`` path.
        savedir : str, optional
            Where a fetched remote file is stored (as in SpeechBrain).
        chunk_seconds, overlap, normalize
            See :meth:`separate_signal`.
        output_dir : str, optional
            Also write ``<stem>_s1.wav``, ... (float WAV, model rate) there.

        Returns
        -------
        torch.Tensor
            [1, T, num_spks] at the model rate, on the CPU.
        """
        if _is_remote(path, savedir):
            from speechbrain.utils.data_utils import split_path
            from speechbrain.utils.fetching import fetch

            source, name = split_path(str(path))
            try:  # SpeechBrain needs a folder for a downloaded file
                path = fetch(name, source, savedir=savedir or tempfile.mkdtemp())
            except Exception as e:
                raise AudioError(f"Cannot fetch {path}: {e}") from e
        info = audio_info(path)
        wav = read_audio(path, sample_rate=self.sample_rate, resample_to_rate=True)
        done = [f"resampled {info.samplerate} -> {self.sample_rate} Hz"] * (
            info.samplerate != self.sample_rate
        ) + [f"averaged {info.channels} channels"] * (info.channels > 1)
        logger.info("%s: %.2f s, %s.", path, info.frames / info.samplerate,
                    ", ".join(done) or f"mono at {self.sample_rate} Hz as is")
        est = self.separate_signal(wav, chunk_seconds, overlap, normalize)
        if output_dir is not None:
            for i, f in enumerate(source_paths(path, output_dir, self.num_spks)):
                write_audio(f, est[0, :, i], self.sample_rate)
        return est


def source_paths(path, output_dir, num_spks):
    """Output files ``<output_dir>/<stem>_s{i}.wav`` for ``i = 1..num_spks``.

    Example
    -------
    >>> [p.name for p in source_paths("a/mix.flac", "out", 2)]
    ['mix_s1.wav', 'mix_s2.wav']
    """
    stem = Path(path).stem
    return [Path(output_dir) / f"{stem}_s{i + 1}.wav" for i in range(num_spks)]
