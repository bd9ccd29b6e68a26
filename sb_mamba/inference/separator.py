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
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import AudioError, audio_info, read_audio, resample, write_audio
from sb_mamba.errors import UserError
from sb_mamba.inference.chunking import chunked_separate
from sb_mamba.modelspec import check_model_yaml, inside

logger = get_logger(__name__)

NORMALIZE = ("none", "peak", "mixture")
PEAK = 0.9  # peak of each source with normalize="peak"
AUTO_ONE_PASS_SECONDS = 30.0  # chunk_seconds="auto": one pass up to this length
AUTO_CHUNK_SECONDS = 10.0  # chunk_seconds="auto": chunk length beyond it


def normalize_sources(est, mix, mode="mixture"):
    """Rescale separated sources.

    ``"mixture"`` (the default): one gain ``g = <mix, sum> / <sum, sum>`` for
    all sources, the least-squares fit of their sum to the mixture, so the
    sources keep the mixture's level and their relative levels; if a source
    would then pass full scale while the mixture does not, all are scaled
    down to a peak of 1. ``"peak"``: each source to a peak of 0.9
    (SpeechBrain's ``separate_file`` uses 1); silent sources stay silent.
    ``"none"``: the model's own scale (a model trained with a
    scale-invariant loss may output sources far above full scale).

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
    >>> loud = torch.stack([50 * mix, -49 * mix], -1)  # sums to the mixture
    >>> bool(normalize_sources(loud, mix / mix.abs().max()).abs().max() <= 1)
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
        est = est * gain[:, None, None]
        peak = est.abs().flatten(1).amax(1)  # [B]
        over = (peak > 1) & (mix.abs().amax(-1) <= 1)
        return est / torch.where(over, peak, 1)[:, None, None]
    return est


def load_weights(path):
    """A state_dict file read with ``torch.load(weights_only=True)``: tensors
    and plain containers only; a file that pickles anything else (which could
    run code) is refused with one :class:`UserError` naming it."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} holds Python objects beyond tensors, which could run "
                        f"code ({first[:200]}): refusing to load it.") from None
    except (EOFError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable weights file ({e}): re-download or "
                        "re-export it.") from None


def _model_folder(source, hparams_file, savedir):
    """The local folder of a model: ``source`` itself, or a fresh copy of a
    remote model's files in ``savedir``."""
    src = os.path.expanduser(str(source))
    if os.path.isdir(src):
        if not os.path.isfile(os.path.join(src, hparams_file)):
            raise FileNotFoundError(2, f"Not a model folder (no {hparams_file}; see "
                                    "sb-mamba export)", src)
        return Path(src).absolute()
    if str(source).startswith(("/", ".", "~")) or (
            src.count("/") > 1 and not src.startswith(("http://", "https://"))):
        raise FileNotFoundError(2, "Model folder not found", src)
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

    folder = Path(savedir or os.path.join("pretrained_models", src.replace("/", "--")))
    for name in (hparams_file, "separator.ckpt"):
        target = folder / name
        if target.is_symlink() or target.exists():  # never stands in for the source's
            target.unlink()
        fetch(name, src, savedir=folder, local_strategy=LocalStrategy.COPY,
              fetch_config=FetchConfig(overwrite=True))
    return folder.absolute()


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
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", savedir=None,
                     overrides=None, run_opts=None, trust_remote_code=False, **kwargs):
        """Load from a hub-layout folder or a HuggingFace repo id, running no
        code that came with it.

        An existing folder is read in place (offline; ``savedir`` is not
        used for it). A hub id (or URL) is fetched into ``savedir``
        (default ``pretrained_models/<owner>--<name>``) as plain copies,
        refreshed from the source at every load, so a file already in
        ``savedir`` never stands in for the source's. Before anything is
        built, ``hyperparams.yaml`` is checked as data
        (:func:`sb_mamba.modelspec.check_model_yaml`: only sb_mamba's
        separators, SpeechBrain's ``Pretrainer``, references and includes of
        the folder's own files) and the weights are read with
        ``torch.load(weights_only=True)``.

        Arguments
        ---------
        source : str or Path
            Folder or ``owner/name`` hub id.
        hparams_file : str
            Inference YAML in ``source``.
        savedir : str, optional
            Where a remote model is stored.
        overrides : dict, optional
            HyperPyYAML overrides of the inference YAML (yours: trusted).
        run_opts : dict, optional
            ``device``, ``precision``, ...
        trust_remote_code : bool
            Skip the YAML check (with a warning): the folder's YAML may then
            run any code. Only for models whose author you trust.
        **kwargs : dict
            Passed to the constructor (e.g. ``freeze_params``).

        Returns
        -------
        MambaSeparator
        """
        folder = _model_folder(source, hparams_file, savedir)
        yaml_file = folder / hparams_file
        if trust_remote_code:
            logger.warning("trust_remote_code=True: %s may run any code it holds.",
                           yaml_file)
        else:
            check_model_yaml(yaml_file, folder)
        with open(yaml_file, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f, overrides or {})
        if "modules" not in hparams or "separator" not in hparams["modules"]:
            raise UserError(f"{yaml_file} has no `modules: separator:`; it is not an "
                            "sb_mamba model (see sb-mamba export).")
        ckpt = folder / "separator.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(2, "The model folder has no weights file", str(ckpt))
        if not trust_remote_code and not inside(ckpt, folder):
            raise UserError(f"{ckpt} leads outside the model folder: refusing to read it.")
        state = load_weights(ckpt)
        try:
            hparams["modules"]["separator"].load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{ckpt} does not fit the separator of {yaml_file}: {e}") from None
        return cls(modules=hparams["modules"], hparams=hparams, run_opts=run_opts, **kwargs)

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

    def separate_signal(self, mix, chunk_seconds="auto", overlap=0.25, normalize="mixture",
                        progress=None):
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
            ``"mixture"`` (default: the mixture's level, never above full
            scale when the mixture is not), ``"peak"`` or ``"none"``
            (:func:`normalize_sources`).
        progress : bool or None
            A tqdm bar over the chunks; ``None`` (default): only on a terminal.

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
            est = chunked_separate(self.separate_batch, mix, S, chunk, overlap, progress)[None]
        if not torch.isfinite(est).all():
            raise UserError(
                f"The separation gave NaN/infinite values (the input peaks at "
                f"{float(mix.abs().max()):.3g}; audio is expected within [-1, 1]): "
                "nothing is written for it; rescale the input.")
        return normalize_sources(est, mix[None], normalize)

    def separate_file(self, path, savedir=None, chunk_seconds="auto", overlap=0.25,
                      normalize="mixture", output_dir=None, output_rate="model",
                      max_samples=None, progress=None):
        """Separate an audio file of any rate and number of channels: it is
        averaged to mono and resampled to :attr:`sample_rate` (logged), then
        separated with :meth:`separate_signal`.

        Arguments
        ---------
        path : str or Path
            Local file, URL or HuggingFace ``owner/repo/file`` path.
        savedir : str, optional
            Where a fetched remote file is stored (as in SpeechBrain).
        chunk_seconds, overlap, normalize, progress
            See :meth:`separate_signal`.
        output_dir : str, optional
            Also write ``<stem>_s1.wav``, ... (float WAV) there, each written
            to a temporary file and renamed.
        output_rate : "model", "input" or int
            Rate of the written files: the model's, the input file's, or Hz.
        max_samples : int, optional
            Refuse inputs whose decoded or resampled size passes this
            (:data:`sb_mamba.audio.MAX_SAMPLES` by default).

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
        wav = read_audio(path, sample_rate=self.sample_rate, resample_to_rate=True,
                         max_samples=max_samples)
        done = [f"resampled {info.samplerate} -> {self.sample_rate} Hz"] * (
            info.samplerate != self.sample_rate
        ) + [f"averaged {info.channels} channels"] * (info.channels > 1)
        logger.info("%s: %.2f s, %s.", path, info.frames / info.samplerate,
                    ", ".join(done) or f"mono at {self.sample_rate} Hz as is")
        est = self.separate_signal(wav, chunk_seconds, overlap, normalize, progress)
        if output_dir is not None:
            rate = {"model": self.sample_rate, "input": info.samplerate}.get(
                output_rate, output_rate)
            out = est[0].T if rate == self.sample_rate else resample(
                est[0].T.contiguous(), self.sample_rate, int(rate))  # [S, T']
            for i, f in enumerate(source_paths(path, output_dir, self.num_spks)):
                write_audio(f, out[i], int(rate))
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
