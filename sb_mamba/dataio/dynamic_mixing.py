"""Dynamic mixing: new speaker mixtures drawn on the fly in every epoch, from any
``<root>/<speaker>/.../<utt>.{wav,flac}`` tree (raw WSJ0 ``si_tr_s``, LibriSpeech
``train-clean-100``, ...; see :mod:`sb_mamba.dataio.speakers`), resampled once
into a cache; fixed valid/test sets are exported in the recipes' CSV format.

An item is drawn (:meth:`DynamicMixingDataset.draw`, a dict of every random
choice) and then rendered (:meth:`DynamicMixingDataset.render`), so a stored
draw re-creates its mixture exactly (``sb_mamba.dataio.make_mixtures``).

Authors
-------
 * sb_mamba developers
"""

import csv
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.audio import AudioError, audio_info, read_audio, write_audio
from sb_mamba.dataio.speakers import (  # noqa: F401 (public here too)
    _list_audio,
    index_speakers,
    prepare_cache,
    split_speakers,
)

logger = get_logger(__name__)

REF_RMS_DB = -25.0  # every source is set to this RMS (dBFS) before its gain


def file_signals(out, subtype="FLOAT"):
    """The float32 signals to write for a :meth:`DynamicMixingDataset.render` output.

    ``"FLOAT"`` keeps them as they are. ``"PCM_16"`` rounds each target,
    image and the noise to 16 bits and makes the mixture the sum of the
    rounded images and noise, so ``mix == sum(images) + noise`` still holds
    exactly in the files.

    Returns
    -------
    dict
        ``mix``, ``s1`` ... (targets), ``noise`` (if any) as float32;
        ``images`` (list) and ``extra`` (kind -> list) on the same grid, as
        float64 (sum them before casting).

    Example
    -------
    >>> out = {"mix": np.full(4, 0.3), "images": np.full((2, 4), 0.15),
    ...        "targets": np.full((2, 4), 0.1), "noise": None}
    >>> sigs = file_signals(out, "PCM_16")
    >>> sigs["mix"].shape, sigs["s2"].dtype, bool(sigs["mix"][0] == 2 * sigs["images"][0][0])
    ((4,), dtype('float32'), True)
    """
    if subtype not in ("FLOAT", "PCM_16"):
        raise ValueError(f"subtype must be 'FLOAT' or 'PCM_16', got {subtype!r}.")

    def q(x):  # float32, then (PCM_16) the 16-bit grid
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        return np.round(x * 32768) / 32768 if subtype == "PCM_16" else x

    sigs = {f"s{k + 1}": q(t) for k, t in enumerate(out["targets"])}
    sigs["images"] = [q(x) for x in out["images"]]
    sigs["extra"] = {kind: [q(x) for x in xs] for kind, xs in out.get("extra", {}).items()}
    if out["noise"] is not None:
        sigs["noise"] = q(out["noise"])
    if subtype == "PCM_16":  # the sum of 16-bit values is exact in 16 bits
        sigs["mix"] = sum(sigs["images"]) + (sigs["noise"] if out["noise"] is not None else 0)
    else:
        sigs["mix"] = q(out["mix"])
    return {k: v if k in ("images", "extra") else v.astype(np.float32) for k, v in sigs.items()}


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

    Example
    -------
    >>> import tempfile; root = tempfile.mkdtemp()
    >>> for spk in "abc": write_audio(f"{root}/{spk}/u.wav", torch.randn(12000) / 9, 8000)
    >>> ds = DynamicMixingDataset(root, epoch_size=4, segment_seconds=1.0)
    >>> item = ds[0]
    >>> sorted(item)
    ['id', 'mix_sig', 's1_sig', 's2_sig']
    >>> item["mix_sig"].shape
    torch.Size([8000])
    """

    def __init__(
        self, speaker_folder, sample_rate=8000, num_spks=2, epoch_size=20000,
        segment_seconds=4.0, gain_db_range=(-2.5, 2.5), noise_folder=None,
        snr_db_range=(-6.0, 3.0), seed=1234, cache_folder=None, peak=0.9, speakers=None,
        min_seconds=1.0, return_meta=False, extensions=(".wav", ".flac"), speaker_level=1,
        length_mode="max",
    ):  # fmt: skip
        ok = gain_db_range[0] <= gain_db_range[1] and snr_db_range[0] <= snr_db_range[1]
        ok = ok and (segment_seconds is None or segment_seconds > 0)
        if length_mode not in ("max", "min"):
            raise ValueError(f"length_mode must be 'max' or 'min'; got {length_mode!r}.")
        if min(num_spks, epoch_size) < 1 or not ok:
            raise ValueError("num_spks, epoch_size, segment_seconds must be positive and "
                             "gain_db_range, snr_db_range (low, high).")  # fmt: skip
        self.sample_rate, self.num_spks, self.epoch_size = int(sample_rate), num_spks, epoch_size
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.gain_db_range, self.snr_db_range = tuple(gain_db_range), tuple(snr_db_range)
        self.seed, self.epoch, self.peak, self.cache_folder = seed, 0, peak, cache_folder
        self.return_meta, self.length_mode = return_meta, length_mode
        index = index_speakers(speaker_folder, extensions, speaker_level, num_spks)
        if speakers is not None:
            if unknown := sorted({str(s) for s in speakers} - set(index)):
                raise ValueError(f"Speakers {unknown[:5]} are not in {speaker_folder}.")
            index = {s: index[s] for s in sorted({str(s) for s in speakers})}
        self._paths, self._frames = {}, {}
        self._register([f for fs in index.values() for f in fs], speaker_folder, "speech")
        min_frames = min_seconds * self.sample_rate
        kept = {s: [f for f in fs if self._frames[f] >= min_frames] for s, fs in index.items()}
        self.index = {s: fs for s, fs in kept.items() if fs}
        self.speakers = sorted(self.index)
        if len(self.speakers) < num_spks:
            raise ValueError(f"Only {len(self.speakers)} speakers in {speaker_folder} have "
                             f"utterances >= {min_seconds} s; num_spks={num_spks}.")  # fmt: skip
        self.noise_files = [] if noise_folder is None else _list_audio(noise_folder, extensions)
        if noise_folder is not None and not self.noise_files:
            raise FileNotFoundError(f"No {'/'.join(extensions)} files in {noise_folder}.")
        self._register(self.noise_files, noise_folder, "noise")
        logger.info("Dynamic mixing: %d speakers, %d utterances, %d noise files, %d Hz.",
                    len(self.speakers), sum(map(len, self.index.values())),
                    len(self.noise_files), self.sample_rate)  # fmt: skip

    def _register(self, files, root, sub):
        """Record the path to read (in ``cache_folder`` if resampled) and length of files."""
        if self.cache_folder is not None:
            cache = Path(self.cache_folder) / sub
            self._paths.update(prepare_cache(files, self.sample_rate, cache, root=root))
        for f in files:
            info = audio_info(self._paths.setdefault(f, f))
            if info.samplerate != self.sample_rate:
                raise AudioError(f"{f} is at {info.samplerate} Hz, not {self.sample_rate} Hz: "
                                 f"set cache_folder to resample the {sub} files once.")  # fmt: skip
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
            item["meta"] = {"speakers": spec["speakers"], "files": spec["files"],
                            "gains_db": spec["gains_db"], "scale": out["scale"],
                            "spans": [[s["offset"], s["offset"] + s["length"]]
                                      for s in spec["sources"]]}  # fmt: skip
            item["meta"].update({} if spec["noise"] is None else {"snr_db": spec["snr_db"]})
            item["meta"].update(self._extra_meta(spec, out))
        return item

    def draw(self, idx):
        """The random choices of item ``idx`` of the current epoch, as a dict.

        ``id``, ``length`` (samples), ``speakers``, ``files``, ``gains_db``,
        ``sources`` (per source: ``begin`` in its file, ``length``,
        ``offset`` in the item), ``noise`` (``file``, ``begin``, ``roll``
        or None) and ``snr_db``: all :meth:`render` needs, so a stored spec
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
        spec = {"id": f"{idx:06d}_" + "_".join(Path(f).stem for f in files), "length": int(T),
                "speakers": spks, "files": files, "gains_db": gains.tolist(),
                "sources": sources, "noise": None, "snr_db": None}  # fmt: skip
        if self.noise_files:  # random file and crop, looped if shorter than T
            f = self.noise_files[rng.integers(len(self.noise_files))]
            L = self._frames[f]
            begin, roll = (int(rng.integers(L - T + 1)), 0) if L >= T else (0, int(rng.integers(L)))
            spec["noise"] = {"file": f, "begin": begin, "roll": roll}
            spec["snr_db"] = float(rng.uniform(*self.snr_db_range))
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
        crops = [self._read(f, s["begin"], s["begin"] + s["length"])
                 for f, s in zip(spec["files"], spec["sources"])]  # fmt: skip
        images, targets, extra = self._images(spec, crops)
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
        mix = speech if noise is None else speech + noise
        signals = [mix, images, targets, *extra.values()] + [noise] * (noise is not None)
        top = max(np.abs(x).max() for x in signals)
        scale = self.peak / top if self.peak is not None and top > self.peak else 1.0
        return {"mix": mix * scale, "images": images * scale, "targets": targets * scale,
                "noise": None if noise is None else noise * scale, "scale": float(scale),
                "extra": {k: v * scale for k, v in extra.items()}}

    def export(self, folder, n, subtype="FLOAT"):
        """Write ``n`` fixed mixtures (items 0..n-1 of epoch 0) and their CSV.

        Writes ``folder/{mix,s1,s2[,s3...][,noise]}/<id>.wav`` and
        ``folder/mixtures.csv`` with columns ``ID,duration,mix_wav,s1_wav,...
        [,noise_wav]`` (absolute paths), the recipes' data-preparation format.
        Build the dataset on held-out ``speakers`` for valid/test sets.

        Arguments
        ---------
        folder : str or Path
            Output folder.
        n : int
            Number of mixtures (may exceed ``epoch_size``).
        subtype : str
            ``"FLOAT"`` (default) writes the items exactly. ``"PCM_16"`` rounds
            each source (and noise) to 16 bits and writes their sum as the mix,
            so mix == sum of the written files still holds exactly.

        Returns
        -------
        Path
            The CSV file.

        Example
        -------
        >>> import tempfile; root = tempfile.mkdtemp()
        >>> for spk in "ab": write_audio(f"{root}/{spk}/u.wav", torch.randn(12000) / 9, 8000)
        >>> ds = DynamicMixingDataset(root, epoch_size=4, segment_seconds=1.0)
        >>> csv_file = ds.export(f"{root}/valid", 2)
        >>> read_audio(csv_file.parent / "mix" / f"{ds[0]['id']}.wav", 8000).shape
        torch.Size([8000])
        """
        if subtype not in ("FLOAT", "PCM_16"):
            raise ValueError(f"subtype must be 'FLOAT' or 'PCM_16', got {subtype!r}.")
        folder = Path(folder).absolute()
        names = [f"s{k + 1}" for k in range(self.num_spks)] + ["noise"] * bool(self.noise_files)
        rows, saved_epoch, self.epoch = [], self.epoch, 0
        try:
            for idx in tqdm(range(n), desc=f"Exporting mixtures to {folder}", unit="mix"):
                spec = self.draw(idx)
                sigs = file_signals(self.render(spec), subtype)
                item = {"id": spec["id"]}
                row = {"ID": item["id"], "duration": round(len(sigs["mix"]) / self.sample_rate, 5)}
                for k in ["mix", *names]:
                    path = folder / k / f"{item['id']}.wav"
                    write_audio(path, sigs[k], self.sample_rate, subtype)
                    row[f"{k}_wav"] = str(path)
                rows.append(row)
        finally:
            self.epoch = saved_epoch
        csv_file = folder / "mixtures.csv"
        with open(csv_file, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["ID", "duration", *[f"{k}_wav" for k in ["mix", *names]]])
            writer.writeheader()
            writer.writerows(rows)
        logger.info("Wrote %d mixtures and %s.", n, csv_file)
        return csv_file
