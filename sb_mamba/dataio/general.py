"""The General recipe's data: several speech corpora, rooms, noise and single talkers.

:func:`prepare_general` lays out, from a fixed split (``splits.json``, see
``recipes/General/meta/build_splits.py``), everything the General recipe and
``benchmarks/bench_robustness.py`` read, under ``save_folder``:

* ``links/speech/<split>/``: one link per speaker (``ls-<id>`` for LibriMini
  readers, ``l2-<id>`` for speechocean762 speakers of ``speech-l2``), so one
  speaker folder serves :class:`~sb_mamba.dataio.mixing.ReverbDynamicMixing`.
  Splits: ``train`` (LibriMini train + speech-l2 train speakers), ``valid``,
  ``test`` (both corpora's held-out speakers), ``test-librimini`` and
  ``test-l2``;
* ``links/noise/{train,test}/`` and ``links/rir/{train,test}/``: the noise
  clips and measured RIRs of each split (each with its ``SOURCES.md``);
* ``rooms/{train,test}/``: simulated RIR banks of disjoint rooms
  (:func:`~sb_mamba.dataio.rir_bank.make_rir_bank`, WHAMR!'s ranges);
* fixed mixtures of held-out speakers: ``valid.csv`` (the training
  conditions), ``test.csv`` (the training conditions with held-out noise and
  rooms) and one ``test_<condition>.csv`` per condition of
  :data:`CONDITIONS` (the robustness benchmark's test sets).

Reverberant targets are each speaker's reverberant image (``reverb_target:
reverberant``): the model separates, it does not also dereverberate.

Authors
-------
 * sb_mamba developers
"""

import json
import os
import shutil
from pathlib import Path

from speechbrain.utils.logger import get_logger

from sb_mamba.dataio._store import forget_options, same_options, store_options
from sb_mamba.dataio.mixing import ReverbDynamicMixing
from sb_mamba.dataio.rir_bank import make_rir_bank
from sb_mamba.errors import UserError

logger = get_logger(__name__)

# The fixed test sets of the robustness benchmark: speaker folder (a split of
# links/speech) and the dataset options that differ from a clean mixture.
CONDITIONS = {
    "clean": {"speakers": "test-librimini"},  # the lab case: unseen LibriSpeech readers
    "voices": {"speakers": "test-l2"},  # children and non-native adults
    "reverb": {"speakers": "test", "reverb_prob": 1.0},  # held-out rooms
    "noisy": {"speakers": "test", "noise_prob": 1.0, "snr_db_range": [-6.0, 3.0]},  # WHAM!'s SNRs
    "single": {"speakers": "test", "single_prob": 1.0},  # one talker alone
}
TEST_GAINS = [-2.5, 2.5]  # dB: relative levels within +-5 dB, as LibriMini's test set


def _links(folder, targets):
    """Make ``folder`` hold exactly the links ``name -> target`` (remade every time)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, target in targets.items():
        os.symlink(os.path.abspath(target), folder / name)


def link_speakers(save_folder, split, librimini, l2=None, l2_split=None):
    """Make ``links/speech/<split>`` of ``save_folder`` (see the module).

    Arguments
    ---------
    save_folder : str or Path
        The preparation's folder.
    split : str
        ``train``, ``valid``, ``test``, ``test-librimini`` or ``test-l2``.
    librimini : str or Path
        LibriMini's speech (``recipes/LibriMini/data``).
    l2, l2_split : Path and dict, optional
        The ``speech-l2`` folder and its split (``splits.json``'s
        ``speech-l2``); not needed for ``test-librimini``.

    Returns
    -------
    Path
        The speaker folder made.

    Example
    -------
    >>> import tempfile, torch
    >>> from sb_mamba.audio import write_audio
    >>> root = Path(tempfile.mkdtemp())
    >>> write_audio(root / "lm" / "test" / "19" / "u.wav", torch.zeros(8), 8000)
    >>> sorted(p.name for p in link_speakers(root / "out", "test-librimini", root / "lm").iterdir())
    ['ls-19']
    """
    librimini, out = Path(librimini), {}
    if split in ("train", "valid", "test", "test-librimini"):
        sub = librimini / split.replace("test-librimini", "test")
        out.update({f"ls-{p.name}": p for p in sorted(sub.iterdir()) if p.is_dir()})
    if split in ("train", "valid", "test", "test-l2"):
        out.update({f"l2-{s}": Path(l2) / s for s in l2_split[split.replace("test-l2", "test")]})
    if missing := [n for n, p in out.items() if not Path(p).is_dir()]:
        raise FileNotFoundError(
            f"Speakers {missing[:3]} of the split are not in {l2}: point "
            "data_folder at the shared data folder."
        )
    folder = layout(save_folder)[f"speech_{split}"]
    _links(folder, out)
    return folder


def _file_links(folder, ids, table):
    """Link names -> files of ``folder`` named ``<id>.wav`` (+ SOURCES.md, a filtered table)."""
    missing = [i for i in ids if not (folder / f"{i}.wav").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {missing[:3]} ({len(missing)} files of the "
            "split): point data_folder at the shared data folder."
        )
    out = {f"{i}.wav": folder / f"{i}.wav" for i in ids}
    if (folder / "SOURCES.md").is_file():
        out["SOURCES.md"] = folder / "SOURCES.md"
    return out, (folder / table if (folder / table).is_file() else None)


def _write_table(src, dst, ids):
    """Copy the rows of a TSV table whose first column is in ``ids``."""
    lines = src.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[0] in set(ids)]
    dst.write_text("\n".join(keep) + "\n")


def layout(save_folder):
    """Paths of the folders :func:`prepare_general` makes, by name.

    Example
    -------
    >>> layout("/s")["noise_test"], layout("/s")["speech_train"]
    (PosixPath('/s/links/noise/test'), PosixPath('/s/links/speech/train'))
    """
    s = Path(save_folder)
    paths = {
        f"speech_{k}": s / "links" / "speech" / k
        for k in ("train", "valid", "test", "test-librimini", "test-l2")
    }
    for split in ("train", "test"):
        paths[f"noise_{split}"] = s / "links" / "noise" / split
        paths[f"rir_{split}"] = s / "links" / "rir" / split
        paths[f"rooms_{split}"] = s / "rooms" / split
    paths["cache"] = s / "cache"  # noise (and speech) resampled once to the model rate
    return paths


def condition_dataset(
    save_folder, condition, n, sample_rate=8000, num_spks=2, segment_seconds=4.0, seed=4321, **mixed
):
    """The fixed-mixture dataset of a test condition, or of ``valid`` / ``test``.

    Arguments
    ---------
    save_folder : str or Path
        A folder :func:`prepare_general` laid out (at least its links).
    condition : str
        A key of :data:`CONDITIONS`, ``"valid"`` or ``"test"`` (the training
        conditions of ``**mixed``, on held-out speakers; ``test`` with
        held-out noise and rooms).
    n : int
        Mixtures.
    sample_rate, num_spks, segment_seconds, seed
        As :class:`~sb_mamba.dataio.mixing.ReverbDynamicMixing`.
    **mixed
        ``reverb_prob``, ``noise_prob``, ``snr_db_range``, ``gain_db_range``
        of the training mixtures (``valid`` and ``test`` only).

    Returns
    -------
    ReverbDynamicMixing
    """
    paths = layout(save_folder)
    names = [*CONDITIONS, "valid", "test"]
    if condition not in names:
        raise UserError(f"Unknown condition {condition!r}: pick one of {names}.")
    held_out = "train" if condition == "valid" else "test"  # valid: training noise/rooms
    opts = dict(noise_prob=0.0, reverb_prob=0.0, gain_db_range=TEST_GAINS)
    if condition in CONDITIONS:
        opts.update({k: v for k, v in CONDITIONS[condition].items() if k != "speakers"})
        speakers = CONDITIONS[condition]["speakers"]
    else:
        opts.update(mixed)
        speakers = condition
    noisy, reverb = opts["noise_prob"] > 0, opts["reverb_prob"] > 0
    return ReverbDynamicMixing(  # a set without noise or rooms reads no noise or RIR
        paths[f"speech_{speakers}"],
        sample_rate=sample_rate,
        num_spks=num_spks,
        epoch_size=n,
        segment_seconds=segment_seconds,
        seed=seed + names.index(condition),
        noise_folder=paths[f"noise_{held_out}"] if noisy else None,
        use_reverb=reverb,
        rir_bank=[paths[f"rir_{held_out}"], paths[f"rooms_{held_out}"]] if reverb else None,
        reverb_target="reverberant",
        cache_folder=paths["cache"],
        **opts,
    )


def prepare_general(
    data_folder,
    save_folder,
    sample_rate=8000,
    num_spks=2,
    skip_prep=False,
    librimini_folder=None,
    splits=None,
    n_valid=60,
    n_test=100,
    segment_seconds=4.0,
    seed=4321,
    reverb_prob=0.5,
    noise_prob=0.5,
    snr_db_range=(-6.0, 10.0),
    gain_db_range=(-5.0, 5.0),
    conditions=tuple(CONDITIONS),
    room_workers=1,
):
    """Lay out the General recipe's splits and write its fixed mixtures.

    Arguments
    ---------
    data_folder : str or Path
        The shared data folder: ``speech-l2/<speaker>/<utt>.flac``,
        ``noise/<clip>.wav`` (with ``noise.tsv``), ``rir/<rir>.wav`` (with
        ``rir.tsv``).
    save_folder : str or Path
        Where the links, rooms, mixtures and CSVs go.
    sample_rate, num_spks : int
        Output rate (the speech is 8 kHz) and speakers per mixture.
    skip_prep : bool
        Do nothing (the CSVs must exist).
    librimini_folder : str or Path
        LibriMini's ``train/``, ``valid/``, ``test/`` speaker folders
        (``recipes/LibriMini/data``).
    splits : str or Path
        The fixed split (``recipes/General/meta/splits.json``).
    n_valid, n_test : int
        Mixtures of ``valid.csv``, and of ``test.csv`` and each condition.
    segment_seconds : float
        Length of the fixed mixtures.
    seed : int
        Seed of the fixed mixtures.
    reverb_prob, noise_prob, snr_db_range, gain_db_range
        The training conditions, also those of ``valid.csv`` and
        ``test.csv``.
    conditions : tuple of str
        The per-condition test sets to write (keys of :data:`CONDITIONS`).
    room_workers : int
        Processes simulating the rooms (once per save folder).

    Example
    -------
    >>> import tempfile, json, numpy as np, torch
    >>> from sb_mamba.audio import write_audio
    >>> root = Path(tempfile.mkdtemp())
    >>> for split in ("train", "valid", "test"):
    ...     for spk in "ab": write_audio(root / "lm" / split / spk / "u.wav", torch.randn(12000) / 9, 8000)
    >>> for spk in "cdef": write_audio(root / "d" / "speech-l2" / spk / "u.wav", torch.randn(12000) / 9, 8000)
    >>> for clip in ("n1", "n2"): write_audio(root / "d" / "noise" / f"{clip}.wav", torch.randn(9000) / 9, 8000)
    >>> h = np.zeros(800); h[10] = 1.0; h[11:300] = 0.01
    >>> for rir in ("roomA_1", "roomA_2", "roomB_1", "roomB_2"): write_audio(root / "d" / "rir" / f"{rir}.wav", torch.from_numpy(h), 8000)
    >>> split = {"speech-l2": {"train": ["c", "d"], "valid": ["e"], "test": ["f"]},
    ...          "noise": {"train": ["n1"], "test": ["n2"]},
    ...          "rir": {"train": ["roomA_1", "roomA_2"], "test": ["roomB_1", "roomB_2"]},
    ...          "simulated_rooms": {"train": {"seed": 1, "rooms": 1}, "test": {"seed": 2, "rooms": 1}}}
    >>> _ = (root / "splits.json").write_text(json.dumps(split))
    >>> prepare_general(root / "d", root / "out", librimini_folder=root / "lm", splits=root / "splits.json",
    ...                 n_valid=2, n_test=2, segment_seconds=1.0, conditions=("single",))
    >>> sorted(p.name for p in (root / "out").glob("*.csv"))
    ['test.csv', 'test_single.csv', 'valid.csv']
    """
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    csvs = [save_folder / f"{k}.csv" for k in ("valid", "test", *[f"test_{c}" for c in conditions])]
    if skip_prep:
        if not all(c.is_file() for c in csvs):
            raise FileNotFoundError(
                f"skip_prep is set but {save_folder} lacks the CSVs of "
                "the data preparation: run once with skip_prep: False."
            )
        return
    if librimini_folder is None or splits is None:
        raise UserError(
            "prepare_general needs librimini_folder (recipes/LibriMini/data) and "
            "splits (recipes/General/meta/splits.json)."
        )
    librimini_folder, splits = Path(librimini_folder), Path(splits)
    for folder in (
        data_folder / "speech-l2",
        data_folder / "noise",
        data_folder / "rir",
        *[librimini_folder / s for s in ("train", "valid", "test")],
    ):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} does not exist: set data_folder to the shared "
                "data folder (speech-l2/, noise/, rir/) and librimini_folder "
                "to recipes/LibriMini/data."
            )
    if unknown := sorted(set(conditions) - set(CONDITIONS)):
        raise UserError(f"Unknown conditions {unknown}: pick from {list(CONDITIONS)}.")
    split = json.loads(splits.read_text())
    mixed = dict(
        reverb_prob=reverb_prob,
        noise_prob=noise_prob,
        snr_db_range=list(snr_db_range),
        gain_db_range=list(gain_db_range),
    )
    options = dict(
        data_folder=str(data_folder.resolve()),
        split=split,
        sample_rate=sample_rate,
        librimini_folder=str(librimini_folder.resolve()),
        num_spks=num_spks,
        n_valid=n_valid,
        n_test=n_test,
        segment_seconds=segment_seconds,
        seed=seed,
        conditions=list(conditions),
        **mixed,
    )
    opt_file = save_folder / "general_prep.json"
    if same_options(opt_file, options, csvs):
        logger.info("General data already prepared in %s; skipping.", save_folder)
        return
    forget_options(opt_file)  # an interrupted run must not look complete
    paths = layout(save_folder)
    for name in ("train", "valid", "test", "test-librimini", "test-l2"):
        link_speakers(
            save_folder, name, librimini_folder, data_folder / "speech-l2", split["speech-l2"]
        )
    for kind, table in (("noise", "noise.tsv"), ("rir", "rir.tsv")):
        for part in ("train", "test"):
            links, src = _file_links(data_folder / kind, split[kind][part], table)
            _links(paths[f"{kind}_{part}"], links)
            if src is not None:
                _write_table(src, paths[f"{kind}_{part}"] / table, split[kind][part])
    for part, room in split["simulated_rooms"].items():
        make_rir_bank(
            paths[f"rooms_{part}"],
            room["rooms"],
            sample_rate=sample_rate,
            seed=room["seed"],
            num_workers=room_workers,
            num_mics=1,
        )
    common = dict(
        sample_rate=sample_rate, num_spks=num_spks, segment_seconds=segment_seconds, seed=seed
    )
    sets = [("valid", n_valid, mixed), ("test", n_test, mixed)]
    sets += [(c, n_test, {}) for c in conditions]
    for name, n, extra in sets:
        ds = condition_dataset(save_folder, name, n, **common, **extra)
        target = save_folder / "mixtures" / name
        if target.exists():
            shutil.rmtree(target)
        csv_name = name if name in ("valid", "test") else f"test_{name}"
        shutil.copy(ds.export(target, n, subtype="PCM_16"), save_folder / f"{csv_name}.csv")
    store_options(opt_file, options)
    logger.info(
        "General data: %d valid, %d test mixtures and test sets %s in %s.",
        n_valid,
        n_test,
        list(conditions),
        save_folder,
    )
