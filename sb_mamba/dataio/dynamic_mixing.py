"""Dynamic mixing: new speaker mixtures drawn on the fly in every epoch, from any
``<root>/<speaker>/.../<utt>.{wav,flac}`` tree (raw WSJ0 ``si_tr_s``, LibriSpeech
``train-clean-100``, ...), resampled once into a cache; fixed valid/test sets are
exported in the recipes' CSV format.

Authors
-------
 * sb_mamba developers
"""

import csv
import os
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.dataio import audio
from sb_mamba.dataio.audio import AudioError, audio_info, read_audio, write_audio

logger = get_logger(__name__)

REF_RMS_DB = -25.0  # every source is set to this RMS (dBFS) before its gain


def _list_audio(folder, extensions):
    """All audio files under ``folder``, sorted (links followed, dot-files skipped)."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        os.path.join(d, f) for d, _, fs in os.walk(folder, followlinks=True)
        for f in fs if f.lower().endswith(exts) and not f.startswith(".")
    )  # fmt: skip


def index_speakers(folder, extensions=(".wav", ".flac"), speaker_level=1, min_speakers=1):
    """Map each speaker to its audio files.

    Arguments
    ---------
    folder : str or Path
        Root of a ``<speaker>/<utt>.wav`` tree (WSJ0 ``si_tr_s``) or a
        ``<speaker>/<chapter>/<utt>.flac`` tree (LibriSpeech ``train-clean-100``).
    extensions : tuple of str
        File endings to take (case-insensitive).
    speaker_level : int
        Path component under ``folder`` naming the speaker (1 = first).
    min_speakers : int
        Raise ``ValueError`` if fewer speakers are found.

    Returns
    -------
    dict
        speaker id -> sorted list of file paths (str), in speaker order.

    Example
    -------
    >>> import tempfile; root = tempfile.mkdtemp()
    >>> for name in ("a/a1", "a/a2", "b/x/b1"): write_audio(f"{root}/{name}.wav", torch.ones(8), 8)
    >>> index = index_speakers(root)
    >>> sorted(index), len(index["a"])
    (['a', 'b'], 2)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Speaker folder {folder} does not exist: point it at the root "
                                "of a <speaker>/<utterance> tree (e.g. wsj0/si_tr_s).")  # fmt: skip
    files, index = _list_audio(folder, extensions), {}
    for path in files:
        parts = Path(path).relative_to(folder).parts
        if len(parts) > speaker_level:
            index.setdefault(parts[speaker_level - 1], []).append(path)
    if skipped := len(files) - sum(map(len, index.values())):
        logger.warning("Skipped %d files outside speaker folders in %s.", skipped, folder)
    if not index:
        raise ValueError(f"No {'/'.join(extensions)} files in speaker folders under {folder} "
                         "(convert WSJ0 .wv1 sphere files to wav with sph2pipe).")  # fmt: skip
    if len(index) < min_speakers:
        raise ValueError(f"{folder} holds {len(index)} speakers but {min_speakers} distinct "
                         "ones are needed: add speakers or lower num_spks.")  # fmt: skip
    return {spk: sorted(index[spk]) for spk in sorted(index)}


def split_speakers(index, valid=0.1, test=0.1, seed=1234):
    """Split speakers at random into disjoint train, valid and test lists.

    Arguments
    ---------
    index : dict or list
        Output of :func:`index_speakers`, or speaker ids.
    valid, test : int or float
        Number of held-out speakers, or a fraction when a float.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    tuple of list
        ``(train, valid, test)`` speaker ids, each sorted.

    Example
    -------
    >>> train, valid, test = split_speakers([f"s{i}" for i in range(10)], 2, 0.2)
    >>> len(train), len(valid), len(test)
    (6, 2, 2)
    """
    spks = sorted(index)
    n_valid, n_test = [n if isinstance(n, int) else round(n * len(spks)) for n in (valid, test)]
    if n_valid + n_test >= len(spks):
        raise ValueError(f"Cannot hold out {n_valid + n_test} of {len(spks)} speakers.")
    order = [spks[i] for i in np.random.default_rng(seed).permutation(len(spks))]
    groups = order[n_valid + n_test :], order[:n_valid], order[n_valid : n_valid + n_test]
    return tuple(sorted(g) for g in groups)


def prepare_cache(files, sample_rate, cache_folder, root=None, subtype="FLOAT"):
    """Resample files to ``sample_rate`` once, into ``cache_folder``.

    Files already at the rate are used in place; files cached by an earlier run
    are reused. New files are written to a temporary dot-file and renamed, so a
    killed run (or DDP ranks writing at once) never leaves a corrupt cache file.

    Arguments
    ---------
    files : list
        Audio files.
    sample_rate : int
        Target rate.
    cache_folder, root : str or Path
        The tree of ``files`` under ``root`` (default: their common folder) is
        mirrored here, as .wav.
    subtype : str
        ``"FLOAT"`` (32-bit, default) or ``"PCM_16"``.

    Returns
    -------
    dict
        original path (str) -> path to read (str), at ``sample_rate``.

    Example
    -------
    >>> import tempfile; root = tempfile.mkdtemp()
    >>> write_audio(f"{root}/in/a/a1.wav", torch.randn(1600) * 0.1, 16000)
    >>> cache = prepare_cache([f"{root}/in/a/a1.wav"], 8000, f"{root}/cache")
    >>> read_audio(cache[f"{root}/in/a/a1.wav"], 8000).shape
    torch.Size([800])
    """
    files = [str(f) for f in files]
    if root is None and files:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    root, mapping, n_new = Path(root or ".").absolute(), {}, 0
    for f in tqdm(files, desc=f"Resample cache ({sample_rate} Hz)", unit="file"):
        rate = audio_info(f).samplerate
        if rate == sample_rate:
            mapping[f] = f
            continue
        out = Path(cache_folder) / Path(os.path.abspath(f)).relative_to(root).with_suffix(".wav")
        try:  # a complete file at the rate (a killed run leaves only dot-files)
            ok = audio_info(out).samplerate == sample_rate
        except AudioError:
            ok = False
        if not ok:
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.wav")
            write_audio(tmp, audio.resample(read_audio(f), rate, sample_rate), sample_rate, subtype)
            os.replace(tmp, out)
            n_new += 1
        mapping[f] = str(out)
    n_cached = sum(m != f for f, m in mapping.items())
    logger.info("Resample cache %s: %d files written, %d reused, %d already at %d Hz.",
                cache_folder, n_new, n_cached - n_new, len(files) - n_cached, sample_rate)  # fmt: skip
    return mapping


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
        Item length; None: the longest drawn utterance (others padded).
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
    ):  # fmt: skip
        ok = gain_db_range[0] <= gain_db_range[1] and snr_db_range[0] <= snr_db_range[1]
        ok = ok and (segment_seconds is None or segment_seconds > 0)
        if min(num_spks, epoch_size) < 1 or not ok:
            raise ValueError("num_spks, epoch_size, segment_seconds must be positive and "
                             "gain_db_range, snr_db_range (low, high).")  # fmt: skip
        self.sample_rate, self.num_spks, self.epoch_size = int(sample_rate), num_spks, epoch_size
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.gain_db_range, self.snr_db_range = tuple(gain_db_range), tuple(snr_db_range)
        self.seed, self.epoch, self.peak, self.cache_folder = seed, 0, peak, cache_folder
        self.return_meta = return_meta
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
        """Draw item ``idx`` of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        spks = [self.speakers[i] for i in rng.choice(len(self.speakers), self.num_spks, False)]
        files = [self.index[s][rng.integers(len(self.index[s]))] for s in spks]
        gains = rng.uniform(*self.gain_db_range, size=self.num_spks)
        T = self.segment or max(self._frames[f] for f in files)
        sources, spans = np.zeros((self.num_spks, T)), []
        for k, f in enumerate(files):
            n = min(self._frames[f], T)
            begin, offset = rng.integers(self._frames[f] - n + 1), rng.integers(T - n + 1)
            wav = read_audio(self._paths[f], start=int(begin), stop=int(begin + n)).double().numpy()
            rms = max(np.sqrt(np.mean(wav**2)), 1e-8)  # a silent crop stays silent
            wav = wav * 10 ** ((REF_RMS_DB + gains[k]) / 20) / rms  # [n]
            sources[k, offset : offset + len(wav)] = wav
            spans.append([int(offset), int(offset + len(wav))])
        speech, noise, snr = sources.sum(0), None, None  # [T]
        if self.noise_files:  # random file and crop, looped if shorter than T
            f = self.noise_files[rng.integers(len(self.noise_files))]
            L = self._frames[f]
            if L >= T:
                begin = rng.integers(L - T + 1)
                noise = read_audio(self._paths[f], start=int(begin), stop=int(begin + T))
            else:
                noise = read_audio(self._paths[f]).roll(-int(rng.integers(L)))
            noise = np.resize(noise.double().numpy(), T)
            if not np.any(noise):
                raise AudioError(f"Noise file {f} is silent: remove it from the noise folder.")
            snr = float(rng.uniform(*self.snr_db_range))
            noise *= np.sqrt(np.sum(speech**2) / (np.sum(noise**2) * 10 ** (snr / 10)))
        mix = speech if noise is None else speech + noise
        top = max(np.abs(s).max() for s in [mix, sources] + ([] if noise is None else [noise]))
        scale = self.peak / top if self.peak is not None and top > self.peak else 1.0
        sigs = {"mix": mix, **{f"s{k + 1}": s for k, s in enumerate(sources)}}
        sigs.update({} if noise is None else {"noise": noise})
        item = {"id": f"{idx:06d}_" + "_".join(Path(f).stem for f in files)}
        item.update({f"{k}_sig": torch.from_numpy((x * scale).astype(np.float32))
                     for k, x in sigs.items()})  # fmt: skip
        if self.return_meta:
            item["meta"] = {"speakers": spks, "files": files, "gains_db": gains.tolist(),
                            "spans": spans, "scale": float(scale)}  # fmt: skip
            item["meta"].update({} if snr is None else {"snr_db": snr})
        return item

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
                item = self._make(idx)
                sigs = {k: item[f"{k}_sig"].double() for k in names}
                if subtype == "PCM_16":  # the sum of 16-bit values is exact in 16 bits
                    sigs = {k: torch.round(s * 32768) / 32768 for k, s in sigs.items()}
                    sigs["mix"] = sum(sigs.values())
                else:
                    sigs["mix"] = item["mix_sig"]
                row = {"ID": item["id"], "duration": round(len(sigs["mix"]) / self.sample_rate, 5)}
                for k in ["mix", *names]:
                    path = folder / k / f"{item['id']}.wav"
                    write_audio(path, sigs[k].float(), self.sample_rate, subtype)
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
