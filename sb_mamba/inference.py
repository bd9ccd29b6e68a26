"""Inference with a trained separator: files, tensors and long recordings.

:class:`MambaSeparator` is a SpeechBrain :class:`~speechbrain.inference.
interfaces.Pretrained` over any sb_mamba separator (``forward(mix [B, T])
-> [B, T, num_spks]``), loaded from a hub-layout folder or HuggingFace repo
written by :func:`sb_mamba.export.export_model`. Files are always downmixed
to mono and resampled to the model rate (logged). Long inputs go in chunks
(:func:`chunked_separate`): overlap-add with weights summing to one, each
chunk's speakers matched to the previous chunk's by SI-SNR on the overlap.

Authors
-------
 * sb_mamba developers
"""

import itertools
import math
import os
import tempfile
from pathlib import Path

import torch
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.logger import get_logger

from sb_mamba.dataio.audio import AudioError, audio_info, read_audio, write_audio
from sb_mamba.metrics import si_snr

logger = get_logger(__name__)

NORMALIZE = ("none", "peak", "mixture")
PEAK = 0.9  # peak of each source with normalize="peak"
AUTO_ONE_PASS_SECONDS = 30.0  # chunk_seconds="auto": one pass up to this length
AUTO_CHUNK_SECONDS = 10.0  # chunk_seconds="auto": chunk length beyond it
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "pretrained" / "sepmamba-librimini-8k"


def default_model():
    """The demo model shipped in the repository (``pretrained/sepmamba-librimini-8k``).

    Returns
    -------
    str
        Its folder, for :meth:`MambaSeparator.from_hparams`.

    Example
    -------
    >>> Path(default_model()).name
    'sepmamba-librimini-8k'
    """
    if not (DEFAULT_MODEL / "hyperparams.yaml").is_file():
        raise FileNotFoundError(
            f"The default model {DEFAULT_MODEL} is missing (it ships with the git "
            "repository, not with a wheel); pass a model folder or hub id instead."
        )
    return str(DEFAULT_MODEL)


def _ramps(length, left, right):
    """Chunk window: ``sin^2`` rise over the ``left`` samples shared with the
    previous chunk, ``cos^2`` fall over the ``right`` ones shared with the next
    (complementary: two overlapping chunks sum to one; a Hann window for
    ``overlap=0.5``), flat elsewhere; never zero."""
    def rise(n):  # sin^2 from ~0 to ~1; its mirror image is the cos^2 fall
        return torch.sin(0.5 * math.pi * (torch.arange(n) + 0.5) / n) ** 2

    w = torch.ones(length)
    w[:left] *= rise(left) if left else 1
    w[length - right :] *= rise(right).flip(0) if right else 1
    return w


def chunk_bounds(length, chunk, overlap=0.5, quantum=256):
    """``(start, end)`` of the chunks covering ``length`` samples.

    Strided models (SepMamba: stride 8 overall; STFT hops) change their
    output when the input moves by a fraction of their stride, so chunks start
    on a grid of ``q`` samples (``quantum`` halved until it is at most the hop
    ``chunk * (1 - overlap)``, which is rounded down to a multiple of ``q``).
    The last chunk starts on the grid at or before ``length - chunk`` and
    runs to the end (< ``q`` samples longer): nothing is zero-padded.

    Arguments
    ---------
    length, chunk : int
        Signal and chunk length, in samples.
    overlap : float
        Least fraction of a chunk shared with the next one, in [0, 1).
    quantum : int
        Largest grid step of the chunk starts (a power of two).

    Returns
    -------
    list of (int, int)

    Example
    -------
    >>> chunk_bounds(11, 4, 0.5)
    [(0, 4), (2, 6), (4, 8), (6, 11)]
    >>> chunk_bounds(20000, 4000, 0.5)[:2]
    [(0, 4000), (1792, 5792)]
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if length <= chunk:
        return [(0, length)]
    q = quantum
    while q > 1 and q > chunk * (1 - overlap):
        q //= 2
    hop = max(q, int(chunk * (1 - overlap)) // q * q)
    starts = list(range(0, length - chunk, hop))
    last = (length - chunk) // q * q
    if starts[-1] == last:
        starts.pop()
    return [(s, s + chunk) for s in starts] + [(last, length)]


def best_permutation(ref, est):
    """``perm`` such that ``est[:, perm]`` best matches ``ref`` (both [T, S])
    in mean SI-SNR, over all ``S!`` permutations.

    Example
    -------
    >>> ref = torch.randn(400, 3)
    >>> best_permutation(ref, 2 * ref[:, [2, 0, 1]])
    [1, 2, 0]
    """
    S = ref.shape[1]
    pair = si_snr(est.T.unsqueeze(0), ref.T.unsqueeze(1))  # [S_ref, S_est]
    perms = list(itertools.permutations(range(S)))
    scores = torch.stack([pair[range(S), p].sum() for p in perms])
    return list(perms[int(scores.argmax())])


def chunked_separate(separate, mix, num_spks, chunk, overlap=0.5):
    """Separate a long mixture chunk by chunk with aligned overlap-add.

    Chunks come from :func:`chunk_bounds`. Each chunk's sources are first
    permuted to best match the previous chunk's output on their overlap
    (mean SI-SNR over all ``num_spks!`` permutations), then weighted by
    :func:`_ramps` (raised-cosine ramps spanning exactly the overlaps; the
    outer edges of the first and last chunks are not tapered) and added; the
    sum is divided by the summed weights, so the weights are one at every
    sample. One chunk runs at a time: memory is one chunk of activations
    plus the [T, num_spks] output.

    Arguments
    ---------
    separate : callable
        ``separate(x [1, L]) -> [1, L, num_spks]``.
    mix : torch.Tensor
        [T] mixture.
    num_spks, chunk : int
        Number of sources; chunk length in samples.
    overlap : float
        Least fraction of a chunk shared with the next one, in [0, 1).

    Returns
    -------
    torch.Tensor
        [T, num_spks] on the CPU.

    Example
    -------
    >>> mix = torch.randn(1001)
    >>> est = chunked_separate(lambda x: torch.stack([x, -x], -1), mix, 2, 300)
    >>> torch.allclose(est[:, 0], mix, atol=1e-6)
    True
    >>> est.shape
    torch.Size([1001, 2])
    """
    T = mix.shape[-1]
    bounds = chunk_bounds(T, chunk, overlap)
    if len(bounds) == 1:
        return separate(mix[None])[0].detach().float().cpu()
    if overlap == 0:
        logger.warning("overlap=0: chunks can hardly be aligned, speakers may swap.")
    out, wsum = torch.zeros(T, num_spks), torch.zeros(T)
    prev = None
    for k, (a, b) in enumerate(bounds):
        est = separate(mix[None, a:b])[0].detach().float().cpu()  # [L, S]
        left = max(0, bounds[k - 1][1] - a) if k > 0 else 0
        right = max(0, b - bounds[k + 1][0]) if k + 1 < len(bounds) else 0
        if prev is not None and left > 0:
            est = est[:, best_permutation(prev[a - bounds[k - 1][0] :], est[:left])]
        w = _ramps(b - a, left, right)
        out[a:b] += est * w[:, None]
        wsum[a:b] += w
        prev = est
    return out / wsum[:, None]


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
