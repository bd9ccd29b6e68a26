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

from sb_mamba import modelfolder
from sb_mamba.audio import AudioError, audio_info, read_audio, resample, write_audio
from sb_mamba.errors import UserError
from sb_mamba.inference.chunking import chunked_separate
from sb_mamba.inference.precision import apply_precision, check_precision
from sb_mamba.nnet.mamba import set_ssm_backend

logger = get_logger(__name__)

NORMALIZE = ("none", "peak", "mixture")
PEAK = 0.9  # peak of each source with normalize="peak"
AUTO_ONE_PASS_SECONDS = 30.0  # chunk_seconds="auto": one pass up to this length
AUTO_CHUNK_SECONDS = 10.0  # chunk_seconds="auto": chunk length beyond it


def normalize_sources(est, mix, mode="mixture"):
    """Rescale separated sources.

    ``"mixture"`` (the default): one least-squares gain per source, fitted
    jointly so that the gained sources sum as closely as possible to the
    mixture: each source gets the mixture's level, and a source the model
    output with inverted polarity gets a negative gain (one gain for the
    sum would let such a pair cancel). A source more than 60 dB below the
    loudest (e.g. the silent second output of a single talker) keeps its
    level relative to the others: silent stays silent. If a source would
    then pass full scale while the mixture does not, all are scaled down to
    a peak of 1. ``"peak"``: each source to a peak of 0.9 (SpeechBrain's
    ``separate_file`` uses 1); silent sources stay silent. ``"none"``: the
    model's own scale (a model trained with a scale-invariant loss may
    output sources far above full scale).

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
    >>> s = torch.randn(1, 800, 2) * 0.1
    >>> mix = s.sum(-1)
    >>> est = torch.stack([50 * s[..., 0], -30 * s[..., 1]], -1)  # one flipped
    >>> normalize_sources(est, mix, "mixture").allclose(s, atol=1e-4)
    True
    >>> silent = torch.stack([40 * mix, torch.zeros_like(mix)], -1)
    >>> normalize_sources(silent, mix)[..., 1].abs().max().item()
    0.0
    >>> normalize_sources(est, mix, "peak").shape
    torch.Size([1, 800, 2])
    """
    if mode not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {mode!r}.")
    if mode == "peak":
        peak = est.abs().amax(dim=1, keepdim=True)  # [B, 1, S]
        return torch.where(peak > 0, est * PEAK / peak.clamp_min(1e-12), est)
    if mode == "mixture":
        est = est * source_gains(est, mix)[:, None, :]  # [B, T, S]
        peak = est.abs().flatten(1).amax(1)  # [B]
        over = (peak > 1) & (mix.abs().amax(-1) <= 1)
        return est / torch.where(over, peak, 1)[:, None, None]
    return est


def source_gains(est, mix, silent_db=60.0):
    """Least-squares gains [B, S] fitting ``sum_i g_i est_i`` to ``mix``.

    Solved in float64 on the sources scaled to unit energy, with a tiny
    ridge (1e-6) so that near-identical sources stay bounded. Sources more
    than ``silent_db`` below the loudest are not fitted: they take the
    median gain of the fitted ones (their relative level is kept); an
    all-zero source gets gain 0.

    Example
    -------
    >>> mix = torch.randn(2, 400)
    >>> est = torch.stack([3 * mix, torch.zeros_like(mix)], -1)
    >>> source_gains(est, mix)
    tensor([[0.3333, 0.0000],
            [0.3333, 0.0000]])
    """
    a, y = est.double(), mix.double()  # [B, T, S], [B, T]
    energy = (a**2).sum(1)  # [B, S]
    gains = torch.zeros_like(energy)
    for b in range(a.shape[0]):
        loud = energy[b] > energy[b].max() * 10 ** (-silent_db / 10)
        if not loud.any():
            continue
        norm = energy[b, loud].sqrt()  # [S']
        u = a[b][:, loud] / norm  # [T, S'] unit-energy columns
        gram = u.T @ u  # [S', S']
        gram = gram + 1e-6 * torch.eye(gram.shape[0], dtype=gram.dtype)
        h = torch.linalg.solve(gram, u.T @ y[b])  # [S']
        gains[b, loud] = h / norm
        rest = ~loud & (energy[b] > 0)
        gains[b, rest] = gains[b, loud].median()
    return gains.to(est.dtype)


def _model_folder(source, savedir):
    """The local folder of a model: ``source`` itself, a shipped model's
    packaged folder (``source`` its name, e.g. ``sepmamba-causal-8k``, when no
    local folder has that name), or a fresh copy of a remote model's files in
    ``savedir`` (the current layout's, else the old layout's, which is then
    read as data by the migration path)."""
    src = os.path.expanduser(str(source))
    if os.path.isdir(src):
        if modelfolder.layout(src) is None:
            raise FileNotFoundError(
                2, f"Not a model folder (no {modelfolder.CONFIG}; see sb-mamba export)", src
            )
        return Path(src).absolute()
    from sb_mamba.resources import pretrained_path, shipped_models

    if src in shipped_models():
        return Path(pretrained_path(src))  # a shipped model's name (no such local folder)
    if not modelfolder.hub_source(source):
        raise FileNotFoundError(
            2,
            "Model folder not found (nor a shipped model: "
            f"{', '.join(shipped_models())}; nor an owner/name hub id)",
            src,
        )
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

    folder = Path(savedir or os.path.join("pretrained_models", src.replace("/", "--")))
    layouts = [
        (modelfolder.CONFIG, modelfolder.WEIGHTS),
        (modelfolder.OLD_YAML, modelfolder.OLD_WEIGHTS),
    ]
    for names in layouts:
        for name in (*layouts[0], *layouts[1]):  # never stands in for the source's
            target = folder / name
            if target.is_symlink() or target.exists():
                target.unlink()
        try:
            for name in names:
                fetch(
                    name,
                    src,
                    savedir=folder,
                    local_strategy=LocalStrategy.COPY,
                    fetch_config=FetchConfig(overwrite=True),
                )
            return folder.absolute()
        except Exception as e:  # noqa: BLE001 - not in this layout (hub errors vary)
            error = e
    raise UserError(
        f"{src} is not a local folder, and fetching it as a hub id failed "
        f"({type(error).__name__}: {' '.join(str(error).split())[:300]}). Check the "
        "path (or a shipped model's name, e.g. sepmamba-causal-8k) or the hub id and "
        "your connection."
    ) from error


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
        ``device``, ``precision`` (``fp32`` | ``int8`` | ``bf16`` | ``fp16``,
        what the device supports: :mod:`sb_mamba.inference.precision`),
        ``ssm_backend`` (``auto`` | ``torch`` | ``cpu_kernel`` | ``cuda``: the
        selective scan's path, set on every Mamba of the model, never
        stored with it), ...

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

    def __init__(self, modules=None, hparams=None, run_opts=None, **kwargs):
        run_opts = dict(run_opts or {})
        backend = run_opts.pop("ssm_backend", "auto")  # sb_mamba's own run option
        precision = run_opts.get("precision", "fp32")
        if precision == "int8":  # sb_mamba's own precision; SpeechBrain's autocast stays off
            run_opts.pop("precision")
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, **kwargs)
        try:
            set_ssm_backend(self.mods.separator, backend)
        except ValueError as e:
            raise UserError(f"run_opts: {e}") from None
        self.precision = check_precision(precision, self.device)
        apply_precision(self.mods.separator, precision)

    @classmethod
    def from_hparams(
        cls,
        source=None,
        hparams_file=None,
        savedir=None,
        overrides=None,
        run_opts=None,
        trust_remote_code=False,
        **kwargs,
    ):
        """Load from a model folder or a HuggingFace repo id, as data.

        A model folder is data (:mod:`sb_mamba.modelfolder`): ``config.json``
        names one of sb_mamba's separators and its arguments, the weights are
        ``separator.safetensors``; nothing in it is run. A folder of the old
        layout (``hyperparams.yaml`` + ``separator.ckpt``) is read by the
        migration path (the YAML as data, in the exact shape the old exporter
        wrote; the weights with ``torch.load(weights_only=True)``), with a
        warning naming ``sb-mamba migrate``. An existing folder is read in
        place (offline; ``savedir`` is not used for it). A hub id (or URL) is
        fetched into ``savedir`` (default ``pretrained_models/<owner>--<name>``)
        as plain copies, refreshed from the source at every load.

        Arguments
        ---------
        source : str or Path, optional
            Folder or ``owner/name`` hub id; left out, the shipped default
            model ``sepmamba-8k`` (:func:`sb_mamba.pretrained_path`).
        hparams_file : None
            Kept for SpeechBrain's signature; a model folder has no
            hyperparameter file to choose.
        savedir : str, optional
            Where a remote model is stored.
        overrides : dict, optional
            Constructor arguments of the separator replacing the stored ones
            (yours, e.g. ``{"num_spks": 3}``).
        run_opts : dict, optional
            ``device``, ``precision``, ``ssm_backend`` (see the class), ...
        trust_remote_code : bool
            Has no effect (a model folder holds no code); a warning says so.
        **kwargs : dict
            Passed to the constructor (e.g. ``freeze_params``).

        Returns
        -------
        MambaSeparator
        """
        if source is None:
            from sb_mamba.resources import pretrained_path

            source = pretrained_path()
        if hparams_file not in (None, modelfolder.OLD_YAML, modelfolder.CONFIG):
            raise UserError(
                f"hparams_file={hparams_file!r}: a model folder is read from its "
                f"{modelfolder.CONFIG}; leave hparams_file out."
            )
        if trust_remote_code:
            logger.warning(
                "trust_remote_code=True has no effect: a model folder is data "
                "and nothing in it runs."
            )
        folder = _model_folder(source, savedir)
        config, state = modelfolder.read_folder(folder)
        net = modelfolder.load_separator(config, state, str(folder), overrides)
        hparams = {
            "sample_rate": config.sample_rate,
            "num_spks": config.num_spks,
            "separator": net,
            "modules": {"separator": net},
        }
        return cls(modules={"separator": net}, hparams=hparams, run_opts=run_opts, **kwargs)

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

    def stream(self):
        """A real-time separator fed chunk by chunk (causal SepMamba only).

        Returns
        -------
        sb_mamba.inference.streaming.StreamingSeparator
            ``feed(chunk [n]) -> [n_ready, num_spks]``, ``flush()``,
            ``reset()``; a model that is not a causal SepMamba raises
            :class:`~sb_mamba.errors.UserError`.
        """
        from sb_mamba.inference.streaming import StreamingSeparator

        self.mods.eval()
        return StreamingSeparator(self.mods.separator, self.sample_rate)

    def separate_signal(
        self,
        mix,
        chunk_seconds="auto",
        overlap=0.25,
        normalize="mixture",
        progress=None,
        stream=False,
    ):
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
        stream : bool
            Run through the streaming path (:meth:`stream`, causal models
            only; ``chunk_seconds`` and ``overlap`` are not used): the same
            output as one offline pass.

        Returns
        -------
        torch.Tensor
            [1, T, num_spks] on the CPU, same length as ``mix``. An all-zero
            input gives zeros (with a warning).
        """
        mix = torch.as_tensor(mix).detach().float().cpu()
        mix = mix[0] if mix.dim() == 2 and mix.shape[0] == 1 else mix
        if mix.dim() != 1:
            raise ValueError(
                f"separate_signal takes one mono signal [T] or [1, T], "
                f"got {tuple(mix.shape)}; average the channels first "
                "(or use separate_batch for a batch)."
            )
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
        if stream:
            est = self.stream().separate(mix)[None]
        elif chunk_seconds is None:
            est = self.separate_batch(mix[None]).cpu()
        else:
            chunk = round(chunk_seconds * self.sample_rate)
            if chunk < 2:
                raise ValueError(f"chunk_seconds={chunk_seconds} is too short.")
            if T > chunk:
                logger.info(
                    "Chunked inference: %g s chunks, overlap %g, %.1f s.",
                    chunk_seconds,
                    overlap,
                    T / self.sample_rate,
                )
            est = chunked_separate(self.separate_batch, mix, S, chunk, overlap, progress)[None]
        if not torch.isfinite(est).all():
            raise UserError(
                f"The separation gave NaN/infinite values (the input peaks at "
                f"{float(mix.abs().max()):.3g}; audio is expected within [-1, 1]): "
                "nothing is written for it; rescale the input."
            )
        return normalize_sources(est, mix[None], normalize)

    def separate_file(
        self,
        path,
        savedir=None,
        chunk_seconds="auto",
        overlap=0.25,
        normalize="mixture",
        output_dir=None,
        output_rate="model",
        max_samples=None,
        progress=None,
        stream=False,
    ):
        """Separate an audio file of any rate and number of channels: it is
        averaged to mono and resampled to :attr:`sample_rate` (logged), then
        separated with :meth:`separate_signal`.

        Arguments
        ---------
        path : str or Path
            Local file, URL or HuggingFace ``owner/repo/file`` path.
        savedir : str, optional
            Where a fetched remote file is stored (as in SpeechBrain).
        chunk_seconds, overlap, normalize, progress, stream
            See :meth:`separate_signal`.
        output_dir : str, optional
            Also write ``<stem>_s1.wav``, ... (float WAV) there, each written
            to a temporary file and renamed (:func:`~sb_mamba.audio.write_audio`);
            unless ``normalize="none"``, the written files (after any
            resampling to ``output_rate``) stay within full scale.
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
        if str(path).startswith(("http://", "https://")) or (
            savedir is not None and modelfolder.hub_source(path, file=True)
        ):
            from speechbrain.utils.data_utils import split_path
            from speechbrain.utils.fetching import fetch

            source, name = split_path(str(path))
            try:  # SpeechBrain needs a folder for a downloaded file
                path = fetch(name, source, savedir=savedir or tempfile.mkdtemp())
            except Exception as e:
                raise AudioError(f"Cannot fetch {path}: {e}") from e
        info = audio_info(path)
        wav = read_audio(
            path, sample_rate=self.sample_rate, resample_to_rate=True, max_samples=max_samples
        )
        done = [f"resampled {info.samplerate} -> {self.sample_rate} Hz"] * (
            info.samplerate != self.sample_rate
        ) + [f"averaged {info.channels} channels"] * (info.channels > 1)
        logger.info(
            "%s: %.2f s, %s.",
            path,
            info.frames / info.samplerate,
            ", ".join(done) or f"mono at {self.sample_rate} Hz as is",
        )
        est = self.separate_signal(wav, chunk_seconds, overlap, normalize, progress, stream)
        if output_dir is not None:
            rate = {"model": self.sample_rate, "input": info.samplerate}.get(
                output_rate, output_rate
            )
            out = (
                est[0].T
                if rate == self.sample_rate
                else resample(est[0].T.contiguous(), self.sample_rate, int(rate))
            )  # [S, T']
            peak = float(out.abs().max())
            if normalize != "none" and peak > 1:  # resampling can overshoot
                out = out / peak  # written files stay within full scale
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
