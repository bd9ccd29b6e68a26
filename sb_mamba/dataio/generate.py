"""Datasets written to disk: ``sb-mamba make-mixtures``.

:func:`make_mixtures` writes a fixed reverberant (and noisy) dataset. From a
speaker folder, an optional noise folder and an optional RIR bank it writes
two-speaker mixtures in the WHAMR! layout::

    OUT/wav8k|wav16k/min|max/{tr,cv,tt}/{mix_clean_anechoic,mix_both_anechoic,
        mix_clean_reverb,mix_both_reverb,s1_anechoic,s2_anechoic,s1_reverb,
        s2_reverb,noise[,s1_early,s2_early]}/<id>.wav

(``mix_both_*`` and ``noise`` only with a noise folder), or the Echo2Mix one::

    OUT/{train,val,test}/<id>/<room>/<spk1>_<spk2>/{mix,spk1_reverb,spk2_reverb[,noise]}.wav

which :func:`sb_mamba.dataio.manifests.prepare_whamr` and ``prepare_echo2mix``
read as they read the real datasets. Mixing is
:class:`~sb_mamba.dataio.mixing.ReverbDynamicMixing` (definitions of
levels, SNR and targets there). Without a RIR bank one room per mixture
is simulated first into ``OUT/rir_bank`` (rooms disjoint across splits).
Speakers are split at random into disjoint train/valid/test groups.

Mixture ``i`` of split ``j`` is drawn from ``default_rng([seed, j, i])``
and room ``r`` of the bank from ``default_rng([seed, r])``, so the files do
not depend on the number of workers and the same seed gives byte-identical
files. ``OUT/metadata.csv`` holds every choice of every mixture (files,
crops, offsets, gains, SNR, noise crop, RIR ids, seeds) and
``OUT/metadata.json`` the options; :func:`regenerate` (``--from-metadata``)
re-creates the dataset from them (exactly, with the same speech, noise and
bank files). The command line is :func:`add_arguments` and :func:`run`.

``OUT`` must not lie inside an input folder (the speech, noise or RIR bank
folder: a second run would read the mixtures as speech). ``metadata.json``
is written first: a rerun into a folder made with the same options rewrites
the same files; a folder that holds a dataset made with other options is
refused (files of both runs would mix, and held-out speakers could leak
across splits), unless ``overwrite`` first removes what the earlier run
wrote; a non-empty folder that make-mixtures did not write is always
refused (nothing it did not write is ever removed). Every check runs before
anything is written.

Authors
-------
 * sb_mamba developers
"""

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import inside, remove_temp_files, write_audio
from sb_mamba.dataio._pool import pool_map
from sb_mamba.dataio._store import (
    store_options,
    write_csv,
)
from sb_mamba.dataio.manifests import ECHO2MIX_FILES, RATE_FOLDERS, SPLIT_FOLDERS
from sb_mamba.dataio.mixing import TARGETS, ReverbDynamicMixing
from sb_mamba.dataio.mixture_files import SUBTYPES, file_signals
from sb_mamba.dataio.rir_bank import make_rir_bank
from sb_mamba.dataio.room import room_ranges
from sb_mamba.dataio.speakers import index_speakers, split_speakers
from sb_mamba.errors import UserError

logger = get_logger(__name__)

# the train, valid and test folders of each layout
LAYOUT_FOLDERS = {name: tuple(splits.values()) for name, splits in SPLIT_FOLDERS.items()}
_STATE = {}  # per worker process: the datasets and options


def _rel(path, root):
    return os.path.relpath(path, root) if root else path


def _speaker_groups(opts):
    """The train, valid and test speakers (checked before any room is simulated)."""
    index = index_speakers(opts["speech_folder"], min_speakers=2)
    valid, test = opts["speaker_split"]
    groups = (
        (list(index),) * 3
        if valid == test == 0
        else split_speakers(index, valid, test, opts["seed"])
    )
    if min(map(len, groups)) < 2:
        raise UserError(
            f"Speaker split {list(map(len, groups))} (train, valid, test) of "
            f"{opts['speech_folder']}: every split needs 2 speakers; hold out "
            "more (--held-out 2 2) or use every speaker everywhere (--held-out 0 0)."
        )
    return groups


def _datasets(opts, out_folder, groups):
    """One :class:`ReverbDynamicMixing` per split (epoch = split index)."""
    datasets = []
    for j, speakers in enumerate(groups):
        ds = ReverbDynamicMixing(
            opts["speech_folder"],
            rir_bank=opts["rir_bank"],
            reverb_target="anechoic" if opts["layout"] == "whamr" else "reverberant",
            early_ms=opts["early_ms"],
            extra_targets=tuple(opts["extra_targets"]),
            rir_choice="index" if opts["simulate_bank"] else "random",
            room_offset=sum(opts["n"][:j]),
            sample_rate=opts["sample_rate"],
            num_spks=2,
            epoch_size=opts["n"][j],
            segment_seconds=opts["segment_seconds"],
            length_mode=opts["mode"],
            gain_db_range=opts["gain_db_range"],
            noise_folder=opts["noise_folder"],
            snr_db_range=opts["snr_db_range"],
            seed=opts["seed"],
            cache_folder=Path(out_folder) / "cache",
            speakers=speakers,
        )
        ds.set_epoch(j)
        datasets.append(ds)
    return datasets


def _write(path, x, opts):
    write_audio(path, np.asarray(x, dtype=np.float32), opts["sample_rate"], opts["subtype"])


def _write_mixture(out_folder, opts, ds, split, spec):
    """Render ``spec`` and write its files; returns (files relative to OUT, room id)."""
    sigs = file_signals(ds.render(spec), opts["subtype"])
    images, noise, extra = sigs["images"], sigs.get("noise"), sigs["extra"]
    room = re.sub(r"[^\w.-]+", "_", ds.bank.info(spec["rirs"][0])["room_id"]).strip("_")
    files = {}
    if opts["layout"] == "whamr":
        rate = RATE_FOLDERS[opts["sample_rate"]]
        base, name = Path(out_folder) / rate / opts["mode"] / split, f"{spec['id']}.wav"
        anechoic = [sigs["s1"].astype(np.float64), sigs["s2"].astype(np.float64)]
        folders = {
            "s1_anechoic": anechoic[0],
            "s2_anechoic": anechoic[1],
            "s1_reverb": images[0],
            "s2_reverb": images[1],
            "mix_clean_anechoic": sum(anechoic),
            "mix_clean_reverb": sum(images),
        }
        if noise is not None:
            folders.update(
                {
                    "noise": noise,
                    "mix_both_anechoic": sum(anechoic) + noise,
                    "mix_both_reverb": sum(images) + noise,
                }
            )
        for kind, xs in extra.items():
            if kind == "early":  # anechoic and reverberant are written above
                folders.update({f"s{k + 1}_{kind}": x for k, x in enumerate(xs)})
        for folder, x in folders.items():
            _write(base / folder / name, x, opts)
        return {"mix_wav": str(Path(rate, opts["mode"], split, "mix_clean_reverb", name))}, room
    d = Path(split, spec["id"], room, "_".join(spec["speakers"]))
    names = ECHO2MIX_FILES
    files = {
        names["mix"]: sigs["mix"],
        **{names["image"].format(k + 1): x for k, x in enumerate(images)},
    }
    files.update({} if noise is None else {names["noise"]: noise})
    for kind, xs in extra.items():
        if kind != "reverberant":  # written above as spk*_reverb
            files.update({f"spk{k + 1}_{kind}.wav": x for k, x in enumerate(xs)})
    for fname, x in files.items():
        _write(Path(out_folder) / d / fname, x, opts)
    return {"mix_wav": str(d / names["mix"])}, room


def _row(opts, ds, split_index, split, idx, spec, written, room):
    """Metadata row of one mixture (paths relative to the speech/noise roots)."""
    row = {
        "split": split,
        "split_index": split_index,
        "index": idx,
        "ID": spec["id"],
        "seed": opts["seed"],
        "length": spec["length"],
        "room_id": room,
    }
    for k, (f, src) in enumerate(zip(spec["files"], spec["sources"]), 1):
        info = ds.bank.info(spec["rirs"][k - 1])
        row.update(
            {
                f"s{k}_file": _rel(f, opts["speech_folder"]),
                f"s{k}_speaker": spec["speakers"][k - 1],
                f"s{k}_begin": src["begin"],
                f"s{k}_length": src["length"],
                f"s{k}_offset": src["offset"],
                f"s{k}_gain_db": repr(spec["gains_db"][k - 1]),
                f"s{k}_rir": info["rir_id"],
                f"s{k}_rt60_target": info.get("rt60_target", ""),
                f"s{k}_rt60_measured": info.get("rt60_measured", ""),
            }
        )
    nz = spec["noise"] or {}
    row.update(
        {
            "noise_file": _rel(nz["file"], opts["noise_folder"]) if nz else "",
            "noise_begin": nz.get("begin", ""),
            "noise_roll": nz.get("roll", ""),
            "snr_db": "" if spec["snr_db"] is None else repr(spec["snr_db"]),
            **written,
        }
    )
    return row


def _init_worker(state):
    _STATE.update(state)


def _job(job):
    """Render and write one mixture (a worker task); returns its metadata row."""
    j, idx, spec = job
    opts, out_folder, ds = _STATE["opts"], _STATE["out"], _STATE["datasets"][j]
    split = LAYOUT_FOLDERS[opts["layout"]][j]
    spec = spec or ds.draw(idx)
    written, room = _write_mixture(out_folder, opts, ds, split, spec)
    return _row(opts, ds, j, split, idx, spec, written, room)


_SAFE_NAME = re.compile(r"\w[\w.-]{0,200}")  # an ID or speaker from metadata.csv

# what make-mixtures writes in OUT, besides the audio folders of its layout
_OWN_FILES = ("metadata.csv", "metadata.json", "cache")


def _stored_options(out_folder):
    """The options in ``OUT/metadata.json`` if make-mixtures wrote it, else None."""
    try:
        stored = json.loads((Path(out_folder) / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    keys = {"speech_folder", "layout", "n", "seed", "sample_rate"}
    return stored if isinstance(stored, dict) and keys <= stored.keys() else None


def _written_by(opts, out_folder):
    """The top-level entries of ``out_folder`` that a run with ``opts`` writes."""
    audio = (
        [RATE_FOLDERS[opts["sample_rate"]]]
        if opts["layout"] == "whamr"
        else list(LAYOUT_FOLDERS["echo2mix"])
    )
    bank = ["rir_bank"] if opts.get("simulate_bank") else []
    names = [*audio, *bank, *_OWN_FILES]
    tmp = [p.name for p in Path(out_folder).glob(".metadata.*.tmp.*")]  # cut writes
    return [Path(out_folder) / n for n in names + tmp if (Path(out_folder) / n).exists()]


def _check_out_folder(opts, out_folder, inputs, overwrite):
    """Refuse (UserError) an output folder a run must not write into.

    Arguments
    ---------
    opts : dict
        The options of this run (as ``metadata.json`` records them).
    out_folder : Path
        The dataset folder.
    inputs : dict
        Name -> folder the run reads (``--speech``, ``--noise``, ...).
    overwrite : bool
        Remove what an earlier make-mixtures run wrote in ``out_folder``.

    Returns
    -------
    list of Path
        What to remove before writing (``overwrite``), else empty.
    """
    for name, folder in inputs.items():
        if folder is not None and inside(out_folder, folder):
            raise UserError(
                f"The output folder {out_folder} is inside the {name} folder "
                f"{folder}: a second run would read these mixtures as input; "
                "choose an output folder outside it."
            )
    if out_folder.exists() and not out_folder.is_dir():
        raise UserError(f"The output {out_folder} is a file, not a folder: choose a folder.")
    if not out_folder.is_dir() or not any(out_folder.iterdir()):
        return []
    stored = _stored_options(out_folder)
    if stored is None:
        raise UserError(
            f"The output folder {out_folder} is not empty and was not written by "
            "sb-mamba make-mixtures (no metadata.json of it): choose a new or "
            "empty folder (--overwrite never removes files it did not write)."
        )
    new = json.loads(json.dumps(opts))
    if stored == new and not overwrite:
        logger.info("%s holds a dataset made with the same options: rewriting it.", out_folder)
        return []
    if not overwrite:
        diff = [
            f"{k} {stored.get(k)!r} there, {new.get(k)!r} now"
            for k in sorted(set(stored) | set(new))
            if stored.get(k) != new.get(k)
        ]
        raise UserError(
            f"The output folder {out_folder} holds a dataset made with other "
            f"options ({'; '.join(diff)}): writing into it would mix files of "
            "both runs; choose another folder, or pass --overwrite to remove "
            "the files of the earlier run first."
        )
    doomed = _written_by(stored, out_folder)
    for name, folder in inputs.items():
        for path in doomed:
            if folder is not None and inside(folder, path):
                raise UserError(
                    f"--overwrite would remove {path}, which holds the {name} "
                    f"folder {folder}: move it out of {out_folder} first."
                )
    return doomed


def _remove(paths, out_folder):
    """Remove what an earlier run wrote (``--overwrite``)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if paths:
        logger.warning(
            "--overwrite: removed %s of an earlier run from %s.",
            ", ".join(p.name for p in paths),
            out_folder,
        )


def _run(opts, out_folder, jobs, num_workers, inputs, overwrite=False):
    out_folder = Path(out_folder)
    if num_workers < 1:
        raise UserError(f"num_workers (--workers) must be >= 1; got {num_workers}.")
    doomed = _check_out_folder(opts, out_folder, inputs, overwrite)
    groups = _speaker_groups(opts)
    _remove(doomed, out_folder)  # every check passed
    created = out_folder.absolute()  # the first folder of its path this run creates
    while not created.parent.exists():
        created = created.parent
    created = None if out_folder.exists() else created
    try:
        return _write_dataset(opts, out_folder, jobs, num_workers, groups)
    except (UserError, FileNotFoundError):
        if created is not None:  # a user error after all: leave nothing behind
            shutil.rmtree(created, ignore_errors=True)
        raise


def _write_dataset(opts, out_folder, jobs, num_workers, groups):
    out_folder.mkdir(parents=True, exist_ok=True)
    stale = remove_temp_files(out_folder)  # left by a killed run
    if stale:
        logger.info("Removed %d temporary files of an interrupted run from %s.", stale, out_folder)
    store_options(out_folder / "metadata.json", opts)  # first: marks the folder as ours
    if opts["simulate_bank"]:
        opts["rir_bank"] = str(out_folder.absolute() / "rir_bank")
        make_rir_bank(
            opts["rir_bank"],
            sum(opts["n"]),
            sample_rate=opts["sample_rate"],
            seed=opts["seed"],
            num_workers=num_workers,
            ranges=opts["room_ranges"],
            sources_per_room=2,
            num_mics=1,
            calibrate=opts["calibrate"],
        )
    datasets = _datasets(opts, out_folder, groups)
    jobs = jobs or [(j, i, None) for j in range(3) for i in range(opts["n"][j])]
    state = {"opts": opts, "out": out_folder, "datasets": datasets}
    rows = pool_map(
        _job, jobs, num_workers, f"Writing mixtures -> {out_folder}", "mix", _init_worker, (state,)
    )
    write_csv(out_folder / "metadata.csv", rows, list(dict.fromkeys(k for r in rows for k in r)))
    store_options(out_folder / "metadata.json", opts)
    logger.info(
        "Wrote %d mixtures (%s layout) and their metadata to %s.",
        len(rows),
        opts["layout"],
        out_folder,
    )
    return out_folder / "metadata.csv"


def _check_options(o):
    """UserError naming the first bad option of :func:`make_mixtures` (before any work)."""

    def is_range(x):
        return len(x) == 2 and x[0] <= x[1]

    rules = [  # (option, valid, what it must be)
        ("layout", o["layout"] in LAYOUT_FOLDERS, f"one of {list(LAYOUT_FOLDERS)}"),
        ("n", len(o["n"]) == 3 and min(o["n"]) >= 1, "three counts >= 1 (train, valid, test)"),
        (
            "sample_rate",
            o["sample_rate"] in RATE_FOLDERS or (o["layout"] != "whamr" and o["sample_rate"] >= 1),
            "8000 or 16000 (the WHAMR! layout exists at these rates only)",
        ),
        ("mode", o["mode"] in ("min", "max"), "'min' or 'max'"),
        ("subtype", o["subtype"] in SUBTYPES, f"one of {list(SUBTYPES)}"),
        ("extra_targets", set(o["extra_targets"]) <= set(TARGETS), f"among {list(TARGETS)}"),
        (
            "segment_seconds",
            o["segment_seconds"] is None or o["segment_seconds"] > 0,
            "positive (or None: per mode)",
        ),
        ("seed", o["seed"] >= 0, ">= 0"),
        ("snr_db_range", is_range(o["snr_db_range"]), "[low, high]"),
        ("gain_db_range", is_range(o["gain_db_range"]), "[low, high]"),
        (
            "speaker_split",
            len(o["speaker_split"]) == 2 and min(o["speaker_split"]) >= 0,
            "two counts or fractions >= 0 (valid, test)",
        ),
        ("early_ms", o["early_ms"] >= 0, ">= 0"),
    ]
    for name, valid, rule in rules:
        if not valid:
            raise UserError(f"{name} must be {rule}; got {o[name]!r}.")
    room_ranges(o["room_ranges"])  # UserError on a bad room range


def make_mixtures(
    speech_folder,
    out_folder,
    *,
    layout="whamr",
    n=(20000, 5000, 3000),
    noise_folder=None,
    rir_bank=None,
    sample_rate=None,
    mode="min",
    segment_seconds=None,
    seed=1234,
    num_workers=1,
    snr_db_range=(-6.0, 3.0),
    gain_db_range=(-2.5, 2.5),
    speaker_split=(0.1, 0.1),
    room_ranges=None,
    early_ms=50.0,
    extra_targets=(),
    subtype="PCM_16",
    calibrate=4,
    overwrite=False,
):
    """Write a fixed dataset (see the module docstring).

    Arguments
    ---------
    speech_folder : str or Path
        ``<speaker>/<utt>.{wav,flac}`` tree (any rate; resampled once).
    out_folder : str or Path
        The dataset folder (pass it as the recipe's ``data_folder``).
    layout : str
        ``"whamr"`` or ``"echo2mix"``.
    n : tuple of int
        Mixtures in train, valid and test.
    noise_folder, rir_bank : str or Path, optional
        Noise recordings (SNR ``snr_db_range`` on the reverberant speech);
        a RIR bank or measured RIRs (default: simulate a room per mixture).
    sample_rate : int, optional
        8000 (WHAMR! default) or 16000 (Echo2Mix default).
    mode, segment_seconds
        Length: the shorter (``"min"``) or longer (``"max"``) utterance, or
        ``segment_seconds`` if given.
    seed, num_workers : int
        Seed of everything; processes (the files do not depend on them).
    snr_db_range, gain_db_range : tuple
        Uniform ranges (dB) of the SNR and of each speaker's level.
    speaker_split : tuple
        Held-out valid and test speakers (counts or fractions; ``(0, 0)``:
        every split uses every speaker).
    room_ranges : dict, optional
        Overrides of ``WHAMR_RANGES`` for simulated rooms.
    early_ms : float
        Window of the ``early`` targets.
    extra_targets : tuple of str
        Also write these targets (``early``: ``s*_early`` / ``spk*_early``).
    subtype : str
        ``"PCM_16"`` (default; mixtures are exact sums of the written parts)
        or ``"FLOAT"``.
    calibrate : int
        RT60 corrections per simulated room.
    overwrite : bool
        If ``out_folder`` holds a dataset of an earlier run (its
        ``metadata.json``), first remove what that run wrote (its audio
        folders, ``rir_bank`` if simulated, ``cache``, ``metadata.*``);
        without it, a folder made with other options is refused.

    Returns
    -------
    Path
        ``OUT/metadata.csv``.

    Example
    -------
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> for spk in "ab": write_audio(f"{root}/speech/{spk}/u.wav", torch.randn(8000) / 9, 8000)
    >>> csv_file = make_mixtures(f"{root}/speech", f"{root}/out", n=(1, 1, 1),
    ...                          speaker_split=(0, 0), room_ranges={"rt60": [0.2, 0.2]})
    >>> new_csv = regenerate(csv_file, f"{root}/again")
    >>> import soundfile as sf; sf.read(next(Path(f"{root}/again").rglob("mix_clean_reverb/*.wav")))[0].shape
    (8000,)
    """
    absolute = lambda p: None if p is None else str(Path(p).absolute())  # noqa: E731
    sample_rate = sample_rate or (8000 if layout == "whamr" else 16000)
    opts = {
        "speech_folder": absolute(speech_folder),
        "noise_folder": absolute(noise_folder),
        "rir_bank": absolute(rir_bank) or str(Path(out_folder).absolute() / "rir_bank"),
        "simulate_bank": rir_bank is None,
        "layout": layout,
        "n": [int(x) for x in n],
        "sample_rate": int(sample_rate),
        "mode": mode,
        "segment_seconds": segment_seconds,
        "seed": int(seed),
        "snr_db_range": list(snr_db_range),
        "gain_db_range": list(gain_db_range),
        "speaker_split": list(speaker_split),
        "room_ranges": room_ranges,
        "early_ms": float(early_ms),
        "extra_targets": list(extra_targets),
        "subtype": subtype,
        "calibrate": int(calibrate),
    }
    _check_options(opts)
    for name, folder in (
        ("speech", speech_folder),
        ("noise", noise_folder),
        ("RIR bank", rir_bank),
    ):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"The {name} folder {folder} does not exist: check the path.")
    inputs = {"speech": speech_folder, "noise": noise_folder, "RIR bank": rir_bank}
    return _run(opts, out_folder, None, num_workers, inputs, overwrite)


def regenerate(
    metadata_csv,
    out_folder,
    *,
    num_workers=1,
    speech_folder=None,
    noise_folder=None,
    rir_bank=None,
    overwrite=False,
):
    """Re-create a dataset from its ``metadata.csv`` (and ``metadata.json``) exactly.

    Every mixture is rendered from its row alone (no random draw), so an
    edited row re-creates the edited mixture. The folders default to those
    recorded in ``metadata.json``; pass them if the data moved. The output
    folder is checked as in :func:`make_mixtures` (``overwrite`` too) and
    must not lie inside the source dataset's folder.

    Returns
    -------
    Path
        The new ``metadata.csv`` (equal to the old one).
    """
    metadata_csv = Path(metadata_csv)
    for path in (metadata_csv, metadata_csv.parent / "metadata.json"):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: pass the metadata.csv written by "
                "sb-mamba make-mixtures, next to its metadata.json."
            )
    opts = json.loads((metadata_csv.parent / "metadata.json").read_text())
    for key, value in (
        ("speech_folder", speech_folder),
        ("noise_folder", noise_folder),
        ("rir_bank", rir_bank),
    ):
        opts[key] = str(Path(value).absolute()) if value is not None else opts[key]
    opts["simulate_bank"] = False  # the bank exists: read it, as recorded
    with open(metadata_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    jobs = []
    for n, row in enumerate(rows, 2):
        for key in ("ID", "s1_speaker", "s2_speaker"):
            if not _SAFE_NAME.fullmatch(str(row.get(key))):
                raise UserError(
                    f"{metadata_csv}, line {n}: {key} {row.get(key)!r} is not a "
                    "plain file name (letters, digits, '_', '-', '.'; no '/', "
                    "no leading '.'): the files would land outside OUT; fix the "
                    "row."
                )
        spec = {
            "id": row["ID"],
            "length": int(row["length"]),
            "snr_db": None,
            "noise": None,
            "speakers": [row["s1_speaker"], row["s2_speaker"]],
            "files": [os.path.join(opts["speech_folder"], row[f"s{k}_file"]) for k in (1, 2)],
            "gains_db": [float(row[f"s{k}_gain_db"]) for k in (1, 2)],
            "rirs": [row[f"s{k}_rir"] for k in (1, 2)],
            "sources": [
                {
                    "begin": int(row[f"s{k}_begin"]),
                    "length": int(row[f"s{k}_length"]),
                    "offset": int(row[f"s{k}_offset"]),
                }
                for k in (1, 2)
            ],
        }
        if row["noise_file"]:
            spec["noise"] = {
                "file": os.path.join(opts["noise_folder"], row["noise_file"]),
                "begin": int(row["noise_begin"]),
                "roll": int(row["noise_roll"]),
            }
            spec["snr_db"] = float(row["snr_db"])
        jobs.append((int(row["split_index"]), int(row["index"]), spec))
    inputs = {
        "speech": opts["speech_folder"],
        "noise": opts["noise_folder"],
        "RIR bank": opts["rir_bank"],
        "source dataset": metadata_csv.parent,
    }
    return _run(opts, out_folder, jobs, num_workers, inputs, overwrite)


def add_arguments(parser):
    """Add the arguments of ``sb-mamba make-mixtures`` to ``parser`` (see :func:`run`).

    Example
    -------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["out", "--speech", "spk", "--n", "4", "2", "2"])
    >>> args.n, args.layout, args.held_out
    ([4, 2, 2], 'whamr', [0.1, 0.1])
    """
    if parser.description is None:
        parser.description = (
            "Write a reverberant/noisy two-speaker dataset in the WHAMR! or "
            "Echo2Mix layout (or re-create one from its metadata.csv)."
        )
    p = parser
    p.add_argument("out", help="output dataset folder (the recipe's data_folder)")
    p.add_argument("--speech", help="speaker folder: <speaker>/<utt>.wav|flac")
    p.add_argument("--noise", help="noise folder (adds mix_both_* / noise.wav)")
    p.add_argument("--rir-bank", help="RIR bank or measured RIRs (default: simulate)")
    p.add_argument("--layout", choices=list(LAYOUT_FOLDERS), default="whamr")
    p.add_argument(
        "--n",
        type=int,
        nargs=3,
        default=[20000, 5000, 3000],
        metavar=("TRAIN", "VALID", "TEST"),
        help="mixtures per split",
    )
    p.add_argument("--sample-rate", type=int, help="8000 (whamr) / 16000 (echo2mix)")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument("--segment-seconds", type=float, help="fixed length instead of --mode")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--snr", type=float, nargs=2, default=[-6.0, 3.0], metavar=("LOW", "HIGH"))
    p.add_argument("--gain", type=float, nargs=2, default=[-2.5, 2.5], metavar=("LOW", "HIGH"))
    p.add_argument(
        "--rt60",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="RT60 range of simulated rooms, s (default 0.1 1.0)",
    )
    p.add_argument(
        "--held-out",
        type=float,
        nargs=2,
        default=[0.1, 0.1],
        metavar=("VALID", "TEST"),
        help="held-out speakers (fraction or count)",
    )
    p.add_argument("--early-ms", type=float, default=50.0)
    p.add_argument("--extra-targets", nargs="*", default=[], choices=list(TARGETS))
    p.add_argument("--subtype", choices=["PCM_16", "FLOAT"], default="PCM_16")
    p.add_argument("--from-metadata", metavar="CSV", help="re-create from this metadata.csv")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="OUT holds a dataset of an earlier run with other options: remove "
        "what that run wrote first (its audio folders, rir_bank if simulated, "
        "cache, metadata.*; never other files). Without it such a folder is "
        "refused; a rerun with the same options rewrites the same files.",
    )


def run(args):
    """Write the dataset of :func:`add_arguments`' namespace ``args``.

    :func:`regenerate` with ``--from-metadata``, else :func:`make_mixtures`
    (``--held-out`` values of 1 or more are speaker counts, smaller ones
    fractions).

    Returns
    -------
    int
        0. A user error (``--speech`` missing, a bad value, a missing
        folder, an output folder inside an input or holding another
        dataset) raises :class:`~sb_mamba.errors.UserError` or
        ``FileNotFoundError`` before anything is written.

    Example
    -------
    >>> import argparse, tempfile
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> run(parser.parse_args([tempfile.mkdtemp()]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: --speech is required (or --from-metadata): ...
    """
    if args.from_metadata:
        regenerate(
            args.from_metadata,
            args.out,
            num_workers=args.workers,
            speech_folder=args.speech,
            noise_folder=args.noise,
            rir_bank=args.rir_bank,
            overwrite=args.overwrite,
        )
        return 0
    if args.speech is None:
        raise UserError(
            "--speech is required (or --from-metadata): pass the folder of "
            "<speaker>/<utt>.wav|flac files to mix."
        )
    held = [int(x) if float(x).is_integer() and x >= 1 else x for x in args.held_out]
    make_mixtures(
        args.speech,
        args.out,
        layout=args.layout,
        n=args.n,
        noise_folder=args.noise,
        rir_bank=args.rir_bank,
        sample_rate=args.sample_rate,
        mode=args.mode,
        segment_seconds=args.segment_seconds,
        seed=args.seed,
        num_workers=args.workers,
        snr_db_range=args.snr,
        gain_db_range=args.gain,
        speaker_split=held,
        room_ranges={"rt60": args.rt60} if args.rt60 else None,
        early_ms=args.early_ms,
        extra_targets=args.extra_targets,
        subtype=args.subtype,
        overwrite=args.overwrite,
    )
    return 0
