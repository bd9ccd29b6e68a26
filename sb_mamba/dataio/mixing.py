"""Dynamic mixing: new speaker mixtures drawn on the fly in every epoch, dry or
reverberant, clean or noisy.

Speech comes from any ``<root>/<speaker>/.../<utt>.{wav,flac}`` tree (raw
WSJ0 ``si_tr_s``, LibriSpeech ``train-clean-100``, ...; see
:mod:`sb_mamba.dataio.speakers`), resampled once into a cache. An item is
drawn (:meth:`DynamicMixingDataset.draw`, a dict of every random choice) and
then rendered (:meth:`DynamicMixingDataset.render`), so a stored draw
re-creates its mixture exactly (:mod:`sb_mamba.dataio.generate`); fixed
valid/test sets are written by :meth:`DynamicMixingDataset.export`
(:mod:`sb_mamba.dataio.mixture_files`).

:class:`ReverbDynamicMixing` (WHAMR!- and Echo2Mix-style mixtures) convolves
each dry source (FFT) with a RIR of one room: from a precomputed bank
(:mod:`sb_mamba.dataio.rir_bank`; the training loop never simulates) or,
without a bank, from a room simulated for the item
(:mod:`sb_mamba.dataio.room`). Definitions (what the tests check, within
0.1 dB):

* **image** ``x_k``: dry source ``k`` (placed at its offset in the T-sample
  item) convolved with its full RIR, first T samples kept;
* **level** of source ``k``: ``10 log10(sum(x_k^2) / n_k)``, ``n_k`` its
  dry samples (the dry-case "RMS over its own samples"), set to
  ``REF_RMS_DB`` + its drawn gain, so relative levels = gain differences;
* **mixture** ``sum_k x_k + noise``; **SNR** ``10 log10(sum((sum_k x_k)^2)
  / sum(noise^2))``, on the reverberant speech, as WHAM!/WHAMR!;
* **targets** (``reverb_target``), each with the image's own scale factor:
  ``anechoic`` = dry * direct-path RIR (delayed, attenuated; WHAMR!'s
  ``s*_anechoic``), ``early`` = dry * (RIR up to ``early_ms`` after the
  direct path), ``reverberant`` = the image itself (Echo2Mix's
  ``spk*_reverb``). All keep the direct-path delay, so they are
  time-aligned with the mixture.

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import AudioError, audio_info, read_audio
from sb_mamba.dataio import room
from sb_mamba.dataio.mixture_files import export_mixtures
from sb_mamba.dataio.rir_bank import RirBank, check_bank
from sb_mamba.dataio.speakers import index_speakers, list_audio, prepare_cache
from sb_mamba.errors import UserError

logger = get_logger(__name__)

REF_RMS_DB = -25.0  # every source is set to this RMS (dBFS) before its gain
TARGETS = ("anechoic", "early", "reverberant")  # reverb_target kinds


class DynamicMixingDataset(torch.utils.data.Dataset):
    """Speaker mixtures drawn at random for every item, reproducibly.

    Item ``idx`` of epoch ``e`` uses ``numpy.random.default_rng([seed, e, idx])``,
    so it is the same across runs and DataLoader workers and changes with
    :meth:`set_epoch` (call it before workers start; no ``persistent_workers``).
    An item draws ``num_spks`` distinct speakers uniformly, one utterance each,
    cropped at random to the segment (a shorter one: whole, zero-padded at a
    random offset). Each crop's RMS over its own samples is set to
    ``REF_RMS_DB``, then a gain drawn in ``gain_db_range`` is applied (relative
    levels = drawn gains). Noise (random file and crop, looped if short) is
    scaled so that ``10 log10(sum(s^2) / sum(n^2))``, ``s`` the sum of sources,
    is the SNR drawn in ``snr_db_range``. ``mix = sum + noise``; if any signal
    peaks above ``peak`` all are scaled down together (levels and SNR kept).

    Arguments
    ---------
    speaker_folder : str or Path
        Root of a speaker tree (see :func:`index_speakers`).
    sample_rate : int
        Output rate; files at other rates need ``cache_folder`` (resampled once).
    num_spks, epoch_size : int
        Sources per mixture; items per epoch (``len``).
    segment_seconds : float or None
        Item length; None: per ``length_mode``.
    length_mode : str
        Without ``segment_seconds``: ``"max"``, the longest drawn utterance
        (others zero-padded at a random offset), or ``"min"``, the shortest
        (others cropped at random), as the WSJ0-mix max / min versions.
    gain_db_range, snr_db_range : tuple
        Uniform ranges of each source's gain and of the speech-to-noise ratio, dB.
    noise_folder : str or Path, optional
        Noise files (searched recursively); None: clean mixtures.
    seed : int
        Base seed.
    cache_folder : str or Path, optional
        Resample cache (``speech/`` and ``noise/`` subfolders).
    peak : float or None
        Peak limit of mixture, sources and noise (None: no limit).
    speakers : list, optional
        Only these speaker ids (disjoint splits: :func:`split_speakers`).
    min_seconds : float
        Shorter utterances are dropped at index time.
    return_meta : bool
        Add ``"meta"``: ``speakers``, ``files``, ``gains_db``, ``spans`` (where
        each source sits), ``scale`` (peak factor) and ``snr_db`` (if noisy).
    extensions, speaker_level
        Passed to :func:`index_speakers`.
    length_mode : str
        See ``segment_seconds``.
    noise_prob : float
        With ``noise_folder``: the share of mixtures that get noise (the
        others carry a silent ``noise_sig``, so batches still collate).
    single_prob : float
        The share of items with a single talker: sources 2.. are silent
        (zero targets), as in a pause of a conversation. Train them with a
        loss defined for silent targets
        (:func:`sb_mamba.metrics.pit_si_snr_silence_loss`).

    Example
    -------
    >>> import tempfile
    >>> from sb_mamba.audio import write_audio
    >>> root = tempfile.mkdtemp()
    >>> for spk in "abc": write_audio(f"{root}/{spk}/u.wav", torch.randn(12000) / 9, 8000)
    >>> ds = DynamicMixingDataset(root, epoch_size=4, segment_seconds=1.0)
    >>> item = ds[0]
    >>> sorted(item)
    ['id', 'mix_sig', 's1_sig', 's2_sig']
    >>> item["mix_sig"].shape
    torch.Size([8000])
    """

    def __init__(
        self,
        speaker_folder,
        sample_rate=8000,
        num_spks=2,
        epoch_size=20000,
        segment_seconds=4.0,
        gain_db_range=(-2.5, 2.5),
        noise_folder=None,
        snr_db_range=(-6.0, 3.0),
        seed=1234,
        cache_folder=None,
        peak=0.9,
        speakers=None,
        min_seconds=1.0,
        return_meta=False,
        extensions=(".wav", ".flac"),
        speaker_level=1,
        length_mode="max",
        noise_prob=1.0,
        single_prob=0.0,
    ):
        ok = gain_db_range[0] <= gain_db_range[1] and snr_db_range[0] <= snr_db_range[1]
        for name, p in (("noise_prob", noise_prob), ("single_prob", single_prob)):
            if not 0.0 <= p <= 1.0:
                raise UserError(f"{name} is a probability in [0, 1]; got {p}.")
        ok = ok and (segment_seconds is None or segment_seconds > 0)
        if length_mode not in ("max", "min"):
            raise UserError(f"length_mode must be 'max' or 'min'; got {length_mode!r}.")
        if min(num_spks, epoch_size) < 1 or not ok:
            raise UserError(
                "num_spks, epoch_size, segment_seconds must be positive and "
                "gain_db_range, snr_db_range (low, high)."
            )
        self.sample_rate, self.num_spks, self.epoch_size = int(sample_rate), num_spks, epoch_size
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.gain_db_range, self.snr_db_range = tuple(gain_db_range), tuple(snr_db_range)
        self.seed, self.epoch, self.peak, self.cache_folder = seed, 0, peak, cache_folder
        self.return_meta, self.length_mode = return_meta, length_mode
        self.noise_prob, self.single_prob = float(noise_prob), float(single_prob)
        index = index_speakers(speaker_folder, extensions, speaker_level, num_spks)
        if speakers is not None:
            if unknown := sorted({str(s) for s in speakers} - set(index)):
                raise UserError(
                    f"Speakers {unknown[:5]} are not in {speaker_folder}: list "
                    "only speakers of that folder."
                )
            index = {s: index[s] for s in sorted({str(s) for s in speakers})}
        self._paths, self._frames = {}, {}
        self._register([f for fs in index.values() for f in fs], speaker_folder, "speech")
        min_frames = min_seconds * self.sample_rate
        kept = {s: [f for f in fs if self._frames[f] >= min_frames] for s, fs in index.items()}
        self.index = {s: fs for s, fs in kept.items() if fs}
        self.speakers = sorted(self.index)
        if len(self.speakers) < num_spks:
            raise UserError(
                f"Only {len(self.speakers)} speakers in {speaker_folder} have "
                f"utterances >= {min_seconds} s; num_spks={num_spks}: add "
                "speakers or lower min_seconds."
            )
        self.noise_files = [] if noise_folder is None else list_audio(noise_folder, extensions)
        if noise_folder is not None and not self.noise_files:
            raise FileNotFoundError(
                f"No {'/'.join(extensions)} files in {noise_folder}: "
                "point noise_folder at a folder of noise recordings."
            )
        self._register(self.noise_files, noise_folder, "noise")
        logger.info(
            "Dynamic mixing: %d speakers, %d utterances, %d noise files, %d Hz.",
            len(self.speakers),
            sum(map(len, self.index.values())),
            len(self.noise_files),
            self.sample_rate,
        )

    def _register(self, files, root, sub):
        """Record the path to read (in ``cache_folder`` if resampled) and length of files."""
        if self.cache_folder is not None:
            cache = Path(self.cache_folder) / sub
            self._paths.update(prepare_cache(files, self.sample_rate, cache, root=root))
        for f in files:
            info = audio_info(self._paths.setdefault(f, f))
            if info.samplerate != self.sample_rate:
                raise AudioError(
                    f"{f} is at {info.samplerate} Hz, not {self.sample_rate} Hz: "
                    f"set cache_folder to resample the {sub} files once."
                )
            self._frames[f] = info.frames

    def set_epoch(self, epoch):
        """Draw the mixtures of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self):
        return self.epoch_size

    def __getitem__(self, idx):
        if not 0 <= idx < self.epoch_size:
            raise IndexError(f"Item {idx} out of range (epoch_size={self.epoch_size}).")
        return self._make(int(idx))

    def _make(self, idx):
        """Draw and render item ``idx`` of the current epoch."""
        spec = self.draw(idx)
        out = self.render(spec)
        sigs = {"mix": out["mix"], **{f"s{k + 1}": s for k, s in enumerate(out["targets"])}}
        sigs.update({} if out["noise"] is None else {"noise": out["noise"]})
        item = {"id": spec["id"]}
        item.update({f"{k}_sig": torch.from_numpy(x.astype(np.float32)) for k, x in sigs.items()})
        if self.return_meta:
            item["meta"] = {
                "speakers": spec["speakers"],
                "files": spec["files"],
                "gains_db": spec["gains_db"],
                "scale": out["scale"],
                "spans": [[s["offset"], s["offset"] + s["length"]] for s in spec["sources"]],
            }
            item["meta"].update({} if spec["noise"] is None else {"snr_db": spec["snr_db"]})
            item["meta"].update({"silent": spec["silent"]} if "silent" in spec else {})
            item["meta"].update(self._extra_meta(spec, out))
        return item

    def draw(self, idx):
        """The random choices of item ``idx`` of the current epoch, as a dict.

        ``id``, ``length`` (samples), ``speakers``, ``files``, ``gains_db``,
        ``sources`` (per source: ``begin`` in its file, ``length``,
        ``offset`` in the item), ``noise`` (``file``, ``begin``, ``roll``
        or None), ``snr_db`` and, for a single talker, ``silent`` (the
        sources left out): all :meth:`render` needs, so a stored spec
        re-creates the item exactly.
        """
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        spks = [self.speakers[i] for i in rng.choice(len(self.speakers), self.num_spks, False)]
        files = [self.index[s][rng.integers(len(self.index[s]))] for s in spks]
        gains = rng.uniform(*self.gain_db_range, size=self.num_spks)
        frames = [self._frames[f] for f in files]
        T = self.segment or (min(frames) if self.length_mode == "min" else max(frames))
        sources = []
        for L in frames:
            n = min(L, T)
            begin, offset = int(rng.integers(L - n + 1)), int(rng.integers(T - n + 1))
            sources.append({"begin": begin, "length": n, "offset": offset})
        spec = {
            "id": f"{idx:06d}_" + "_".join(Path(f).stem for f in files),
            "length": int(T),
            "speakers": spks,
            "files": files,
            "gains_db": gains.tolist(),
            "sources": sources,
            "noise": None,
            "snr_db": None,
        }
        noisy = self.noise_files and (self.noise_prob >= 1 or rng.uniform() < self.noise_prob)
        if noisy:  # random file and crop, looped if shorter than T
            f = self.noise_files[rng.integers(len(self.noise_files))]
            L = self._frames[f]
            begin, roll = (int(rng.integers(L - T + 1)), 0) if L >= T else (0, int(rng.integers(L)))
            spec["noise"] = {"file": f, "begin": begin, "roll": roll}
            spec["snr_db"] = float(rng.uniform(*self.snr_db_range))
        if self.single_prob > 0 and rng.uniform() < self.single_prob:
            spec["silent"] = list(range(1, self.num_spks))  # one talker: the others silent
        self._draw_extra(rng, spec, idx)
        return spec

    def _draw_extra(self, rng, spec, idx):
        """Hook: further random choices, drawn after all of the above."""

    def _extra_meta(self, spec, out):
        """Hook: further ``meta`` entries."""
        return {}

    def _read(self, f, start=0, stop=None):
        return read_audio(self._paths[f], start=start, stop=stop).double().numpy()

    def _images(self, spec, crops):
        """Sources as heard in the mixture [S, T], the targets [S, T], and a
        dict of further signals to render (scaled with the others).

        Here sources and targets are the crops, each at ``REF_RMS_DB`` + its
        gain (RMS over its own samples), placed at their offsets.
        """
        sources = np.zeros((self.num_spks, spec["length"]))
        for k, (wav, src) in enumerate(zip(crops, spec["sources"])):
            rms = max(np.sqrt(np.mean(wav**2)), 1e-8)  # a silent crop stays silent
            wav = wav * 10 ** ((REF_RMS_DB + spec["gains_db"][k]) / 20) / rms  # [n]
            sources[k, src["offset"] : src["offset"] + len(wav)] = wav
        return sources, sources, {}

    def render(self, spec):
        """Signals of a :meth:`draw` spec (float64 numpy arrays).

        Returns
        -------
        dict
            ``mix`` [T], ``images`` [S, T] (the sources as summed into the
            mixture), ``targets`` [S, T], ``noise`` [T] or None, ``extra``
            (further signals of subclasses) and ``scale`` (the common
            peak-limiting factor over all of them, already applied).
        """
        T = spec["length"]
        crops = [
            self._read(f, s["begin"], s["begin"] + s["length"])
            for f, s in zip(spec["files"], spec["sources"])
        ]
        images, targets, extra = self._images(spec, crops)
        for k in spec.get("silent", ()):  # a single talker: the other sources are silent
            images[k], targets[k] = 0.0, 0.0
            for x in extra.values():
                x[k] = 0.0
        speech, noise = images.sum(0), None  # [T]
        if spec["noise"] is not None:
            f, nz = spec["noise"]["file"], spec["noise"]
            if self._frames[f] >= T:
                noise = self._read(f, nz["begin"], nz["begin"] + T)
            else:
                noise = np.roll(self._read(f), -nz["roll"])
            noise = np.resize(noise, T)
            if not np.any(noise):
                raise AudioError(f"Noise file {f} is silent: remove it from the noise folder.")
            noise *= np.sqrt(np.sum(speech**2) / (np.sum(noise**2) * 10 ** (spec["snr_db"] / 10)))
        elif self.noise_files:  # a clean item of a noisy set (noise_prob < 1)
            noise = np.zeros(T)
        mix = speech if noise is None else speech + noise
        signals = [mix, images, targets, *extra.values()] + [noise] * (noise is not None)
        top = max(np.abs(x).max() for x in signals)
        scale = self.peak / top if self.peak is not None and top > self.peak else 1.0
        return {
            "mix": mix * scale,
            "images": images * scale,
            "targets": targets * scale,
            "noise": None if noise is None else noise * scale,
            "scale": float(scale),
            "extra": {k: v * scale for k, v in extra.items()},
        }

    def export(self, folder, n, subtype="FLOAT"):
        """Write ``n`` fixed mixtures (items 0..n-1 of epoch 0) and their CSV.

        See :func:`~sb_mamba.dataio.mixture_files.export_mixtures` (the
        arguments after ``dataset``); returns the CSV file.
        """
        return export_mixtures(self, folder, n, subtype)


class ReverbDynamicMixing(DynamicMixingDataset):
    """Dynamic mixing of reverberant speakers in one room per mixture, plus noise.

    Arguments
    ---------
    speaker_folder : str or Path
        Root of a speaker tree (see :class:`DynamicMixingDataset`, whose
        keyword arguments, e.g. ``noise_folder`` and ``snr_db_range``, all
        apply).
    use_reverb : bool
        False: exactly :class:`DynamicMixingDataset` (dry mixtures).
    reverb_prob : float
        With ``use_reverb``: the share of reverberant mixtures (the others
        dry, their targets the dry sources).
    rir_bank : str, Path or list, optional
        Bank folder (:func:`~sb_mamba.dataio.rir_bank.make_rir_bank`) or a folder of measured ``.wav``
        RIRs, or a list of them (each mixture picks a bank uniformly, e.g.
        measured and simulated rooms alike often). Each mixture takes one room at random and ``num_spks``
        distinct source positions of it. None: a room is drawn from
        ``room_ranges`` and simulated per item (seconds per item: for
        tests and data generation, not for training).
    reverb_target : str
        ``"anechoic"``, ``"early"`` or ``"reverberant"`` (see the module).
    early_ms : float
        Early-reverberation window after the direct path (``"early"``).
    room_ranges : dict, optional
        Overrides of :data:`sb_mamba.dataio.room.WHAMR_RANGES` (only
        without ``rir_bank``).
    rir_choice : str
        ``"random"`` room per item, or ``"index"``: room ``(room_offset +
        idx) % rooms`` (one room per mixture, as the dataset generator uses).
    room_offset : int
        See ``rir_choice``.
    mic : int
        RIR channel used (reference mic).
    extra_targets : tuple of str
        Further target kinds rendered into ``render(spec)["extra"]`` as
        ``<kind>`` [S, T] (the dataset generator writes them all).
    **kwargs
        Passed to :class:`DynamicMixingDataset`.

    Example
    -------
    >>> import tempfile, torch
    >>> from sb_mamba.audio import write_audio
    >>> root = tempfile.mkdtemp()
    >>> for spk in "ab": write_audio(f"{root}/{spk}/u.wav", torch.randn(12000) / 9, 8000)
    >>> ds = ReverbDynamicMixing(root, epoch_size=2, segment_seconds=1.0,
    ...                          room_ranges={"rt60": [0.2, 0.2]})
    >>> ds[0]["mix_sig"].shape, ds[0]["s2_sig"].shape
    (torch.Size([8000]), torch.Size([8000]))
    """

    def __init__(
        self,
        speaker_folder,
        use_reverb=True,
        rir_bank=None,
        reverb_target="anechoic",
        early_ms=50.0,
        room_ranges=None,
        rir_choice="random",
        room_offset=0,
        mic=0,
        extra_targets=(),
        reverb_prob=1.0,
        **kwargs,
    ):
        for kind in (reverb_target, *extra_targets):
            if kind not in TARGETS:
                raise UserError(f"reverb_target must be one of {list(TARGETS)}; got {kind!r}.")
        if rir_choice not in ("random", "index"):
            raise UserError(f"rir_choice must be 'random' or 'index'; got {rir_choice!r}.")
        if early_ms < 0:
            raise UserError(f"early_ms must be >= 0; got {early_ms}.")
        if not 0.0 <= reverb_prob <= 1.0:
            raise UserError(f"reverb_prob is a probability in [0, 1]; got {reverb_prob}.")
        super().__init__(speaker_folder, **kwargs)
        self.use_reverb, self.reverb_target, self.early_ms = (
            bool(use_reverb),
            reverb_target,
            early_ms,
        )
        self.rir_choice, self.room_offset = rir_choice, int(room_offset)
        self.mic, self.extra_targets = int(mic), tuple(extra_targets)
        self.ranges = room.room_ranges(dict(room_ranges) if room_ranges else None)
        self.reverb_prob, self.banks = float(reverb_prob), []
        if self.use_reverb and rir_bank is not None:
            for folder in [rir_bank] if isinstance(rir_bank, (str, Path)) else rir_bank:
                check_bank(folder)
                self.banks.append(
                    RirBank(folder, self.sample_rate, self.mic, min_sources=self.num_spks)
                )
        self.bank = self.banks[0] if self.banks else None  # the bank (one-bank datasets)
        if self.use_reverb and not self.banks:
            logger.warning(
                "use_reverb without rir_bank: a room is simulated for every "
                "mixture (0.1-5 s each); for training, precompute a bank with "
                "sb-mamba make-rir-bank and set rir_bank."
            )

    def _draw_extra(self, rng, spec, idx):
        """One room and ``num_spks`` distinct source positions in it."""
        if not self.use_reverb or (self.reverb_prob < 1 and rng.uniform() >= self.reverb_prob):
            return
        if self.bank is None:
            spec["room"] = room.draw_room(rng, self.ranges, self.num_spks, num_mics=1)
            return
        bank = self.bank
        if len(self.banks) > 1:
            spec["bank"] = int(rng.integers(len(self.banks)))
            bank = self.banks[spec["bank"]]
        n = len(bank)
        pick = (self.room_offset + idx) % n if self.rir_choice == "index" else rng.integers(n)
        rir_ids = bank.rooms[int(pick)]  # the source positions of one room
        spec["rirs"] = [rir_ids[j] for j in rng.choice(len(rir_ids), self.num_spks, replace=False)]

    def _extra_meta(self, spec, out):
        return {k: spec[k] for k in ("rirs", "room", "bank") if k in spec}

    def rirs(self, spec):
        """Per source: ``full``, ``direct`` RIR and ``direct_index`` (at the item rate)."""
        if "rirs" in spec:
            bank = self.banks[spec.get("bank", 0)] if self.banks else None
            if bank is None:
                raise UserError(
                    "This mixture names RIRs of a bank but the dataset has no "
                    "rir_bank: pass the bank it was made with."
                )
            return [bank.get(r) for r in spec["rirs"]]
        sim = room.simulate_room(spec["room"], self.sample_rate)
        return [
            {
                "full": sim["rirs"][k, 0],
                "direct": sim["direct"][k, 0],
                "direct_index": int(sim["direct_index"][k, 0]),
            }
            for k in range(self.num_spks)
        ]

    def _filter(self, kind, rir):
        if kind == "anechoic":
            return rir["direct"]
        if kind == "early":
            return room.early_rir(rir["full"], rir["direct_index"], self.sample_rate, self.early_ms)
        return rir["full"]

    def _images(self, spec, crops):
        """Reverberant images, targets and the ``extra_targets`` (see the module)."""
        if "rirs" not in spec and "room" not in spec:  # a dry item
            return super()._images(spec, crops)
        S, T = self.num_spks, spec["length"]
        dry = np.zeros((S, T))
        for k, (wav, src) in enumerate(zip(crops, spec["sources"])):
            dry[k, src["offset"] : src["offset"] + len(wav)] = wav
        rirs = self.rirs(spec)
        images = np.stack([room.reverberate(dry[k], rirs[k]["full"]) for k in range(S)])
        kinds = {self.reverb_target, *self.extra_targets} - {"reverberant"}
        filtered = {
            kind: np.stack(
                [room.reverberate(dry[k], self._filter(kind, rirs[k])) for k in range(S)]
            )
            for kind in kinds
        }
        filtered["reverberant"] = images
        n = np.array([s["length"] for s in spec["sources"]])
        energy = np.maximum(np.sum(images**2, axis=1) / n, 1e-16)
        gain = 10 ** ((REF_RMS_DB + np.array(spec["gains_db"])) / 20) / np.sqrt(energy)
        filtered = {kind: x * gain[:, None] for kind, x in filtered.items()}
        extra = {kind: filtered[kind] for kind in self.extra_targets}
        return filtered["reverberant"], filtered[self.reverb_target], extra


def check_remix(dataset, *, speed_perturb=False, rand_shift=False):
    """Refuse augmentations that re-sum anechoic or early targets into the mixture.

    Speed perturbation and random shifts rebuild the mixture as the sum of
    the targets (+ noise): right only when the targets are the reverberant
    images themselves.

    Arguments
    ---------
    dataset : torch.utils.data.Dataset
        The training set (only a reverberant :class:`ReverbDynamicMixing`
        with other targets is refused).
    speed_perturb, rand_shift : bool
        Whether the training loop applies them (a recipe's
        ``use_speedperturb`` and ``use_rand_shift``).

    Example
    -------
    >>> from types import SimpleNamespace
    >>> check_remix(object(), speed_perturb=True)  # a dry dataset: fine
    >>> check_remix(SimpleNamespace(use_reverb=True, reverb_target="anechoic"),
    ...             speed_perturb=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: use_speedperturb re-create the mixture as the sum of ...
    """
    target = (
        getattr(dataset, "reverb_target", None) if getattr(dataset, "use_reverb", False) else None
    )
    remix = [
        key
        for key, used in (("use_speedperturb", speed_perturb), ("use_rand_shift", rand_shift))
        if used
    ]
    if target not in (None, "reverberant") and remix:
        raise UserError(
            f"{' and '.join(remix)} re-create the mixture as the sum of the targets, but "
            f"reverb_target={target!r} differs from the reverberant mixture: set "
            f"{'/'.join(remix)} to False or reverb_target to reverberant."
        )
