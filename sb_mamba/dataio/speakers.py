"""Speaker trees for dynamic mixing: index speakers, split them, resample once.

Any ``<root>/<speaker>/.../<utt>.{wav,flac}`` tree works (raw WSJ0
``si_tr_s``, LibriSpeech ``train-clean-100``, ...).

Authors
-------
 * sb_mamba developers
"""

import os
from pathlib import Path

import numpy as np
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba import audio  # audio.resample: looked up at call time (tests patch it)
from sb_mamba.audio import AudioError, audio_info, read_audio, write_audio
from sb_mamba.errors import UserError

logger = get_logger(__name__)


def list_audio(folder, extensions=(".wav", ".flac")):
    """All audio files under ``folder``, sorted (links followed, dot-files skipped).

    Arguments
    ---------
    folder : str or Path
        Searched recursively.
    extensions : tuple of str
        File endings to take (case-insensitive).

    Returns
    -------
    list of str

    Example
    -------
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> for name in ("b/x.WAV", "a/y.wav", "a/.z.wav"): write_audio(f"{root}/{name}", torch.ones(8), 8)
    >>> [os.path.relpath(f, root) for f in list_audio(root)]
    ['a/y.wav', 'b/x.WAV']
    """
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        os.path.join(d, f)
        for d, _, fs in os.walk(folder, followlinks=True)
        for f in fs
        if f.lower().endswith(exts) and not f.startswith(".")
    )


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
        Raise ``UserError`` if fewer speakers are found.

    Returns
    -------
    dict
        speaker id -> sorted list of file paths (str), in speaker order.

    Example
    -------
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> for name in ("a/a1", "a/a2", "b/x/b1"): write_audio(f"{root}/{name}.wav", torch.ones(8), 8)
    >>> index = index_speakers(root)
    >>> sorted(index), len(index["a"])
    (['a', 'b'], 2)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Speaker folder {folder} does not exist: point it at the root "
            "of a <speaker>/<utterance> tree (e.g. wsj0/si_tr_s)."
        )
    files, index = list_audio(folder, extensions), {}
    for path in files:
        parts = Path(path).relative_to(folder).parts
        if len(parts) > speaker_level:
            index.setdefault(parts[speaker_level - 1], []).append(path)
    if skipped := len(files) - sum(map(len, index.values())):
        logger.warning("Skipped %d files outside speaker folders in %s.", skipped, folder)
    if not index:
        raise UserError(
            f"No {'/'.join(extensions)} files in speaker folders under {folder} "
            "(convert WSJ0 .wv1 sphere files to wav with sph2pipe)."
        )
    if len(index) < min_speakers:
        raise UserError(
            f"{folder} holds {len(index)} speakers but {min_speakers} distinct "
            "ones are needed: add speakers or lower num_spks."
        )
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
        raise UserError(
            f"Cannot hold out {n_valid + n_test} of {len(spks)} speakers: hold "
            "out fewer valid/test speakers."
        )
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
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
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
    logger.info(
        "Resample cache %s: %d files written, %d reused, %d already at %d Hz.",
        cache_folder,
        n_new,
        n_cached - n_new,
        len(files) - n_cached,
        sample_rate,
    )
    return mapping
