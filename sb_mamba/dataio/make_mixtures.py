"""``sb-mamba-make-mixtures``: a fixed reverberant (and noisy) dataset on disk.

From a speaker folder, an optional noise folder and an optional RIR bank it
writes two-speaker mixtures in the WHAMR! layout::

    OUT/wav8k|wav16k/min|max/{tr,cv,tt}/{mix_clean_anechoic,mix_both_anechoic,
        mix_clean_reverb,mix_both_reverb,s1_anechoic,s2_anechoic,s1_reverb,
        s2_reverb,noise[,s1_early,s2_early]}/<id>.wav

(``mix_both_*`` and ``noise`` only with a noise folder), or the Echo2Mix one::

    OUT/{train,val,test}/<id>/<room>/<spk1>_<spk2>/{mix,spk1_reverb,spk2_reverb[,noise]}.wav

which :func:`sb_mamba.dataio.prepare.prepare_whamr` and ``prepare_echo2mix``
read as they read the real datasets. Mixing is
:class:`~sb_mamba.dataio.reverb_mixing.ReverbDynamicMixing` (definitions of
levels, SNR and targets there). Without ``--rir-bank`` one room per mixture
is simulated first into ``OUT/rir_bank`` (rooms disjoint across splits).
Speakers are split at random into disjoint train/valid/test groups.

Mixture ``i`` of split ``j`` is drawn from ``default_rng([seed, j, i])``
and room ``r`` of the bank from ``default_rng([seed, r])``, so the files do
not depend on the number of workers and the same seed gives byte-identical
files. ``OUT/metadata.csv`` holds every choice of every mixture (files,
crops, offsets, gains, SNR, noise crop, RIR ids, seeds) and
``OUT/metadata.json`` the options; ``--from-metadata`` re-creates the
dataset from them (exactly, with the same speech, noise and bank files).

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import json
import os
import re
from pathlib import Path

import numpy as np
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import write_audio
from sb_mamba.dataio.dynamic_mixing import file_signals
from sb_mamba.dataio.reverb import make_rir_bank, pool_map
from sb_mamba.dataio.reverb_mixing import TARGETS, ReverbDynamicMixing
from sb_mamba.dataio.speakers import index_speakers, split_speakers

logger = get_logger(__name__)

SPLITS = {"whamr": ("tr", "cv", "tt"), "echo2mix": ("train", "val", "test")}
_STATE = {}  # per worker process: the datasets and options


def _rel(path, root):
    return os.path.relpath(path, root) if root else path


def _options(speech_folder, out_folder, layout, n, noise_folder, rir_bank, sample_rate,
             mode, segment_seconds, seed, snr_db_range, gain_db_range, speaker_split,
             room_ranges, early_ms, extra_targets, subtype, calibrate):  # fmt: skip
    """Checked options (absolute paths) as stored in ``metadata.json``."""
    if layout not in SPLITS:
        raise ValueError(f"layout must be one of {list(SPLITS)}; got {layout!r}.")
    if len(n) != 3 or min(n) < 1:
        raise ValueError(f"n must be three counts >= 1 (train, valid, test); got {list(n)}.")
    sample_rate = sample_rate or (8000 if layout == "whamr" else 16000)
    if layout == "whamr" and sample_rate not in (8000, 16000):
        raise ValueError(f"The WHAMR! layout exists at 8000 or 16000 Hz; got {sample_rate}.")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max'; got {mode!r}.")
    if subtype not in ("PCM_16", "FLOAT"):
        raise ValueError(f"subtype must be 'PCM_16' or 'FLOAT'; got {subtype!r}.")
    if unknown := sorted(set(extra_targets) - set(TARGETS)):
        raise ValueError(f"extra_targets must be among {list(TARGETS)}; got {unknown}.")
    for name, folder in (("speech", speech_folder), ("noise", noise_folder),
                         ("RIR bank", rir_bank)):  # fmt: skip
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"The {name} folder {folder} does not exist: check the path.")
    absolute = lambda p: None if p is None else str(Path(p).absolute())  # noqa: E731
    return {"speech_folder": absolute(speech_folder), "noise_folder": absolute(noise_folder),
            "rir_bank": absolute(rir_bank) or str(Path(out_folder).absolute() / "rir_bank"),
            "simulate_bank": rir_bank is None, "layout": layout, "n": [int(x) for x in n],
            "sample_rate": int(sample_rate), "mode": mode, "segment_seconds": segment_seconds,
            "seed": int(seed), "snr_db_range": list(snr_db_range),
            "gain_db_range": list(gain_db_range), "speaker_split": list(speaker_split),
            "room_ranges": room_ranges, "early_ms": float(early_ms),
            "extra_targets": list(extra_targets), "subtype": subtype,
            "calibrate": int(calibrate)}  # fmt: skip


def _datasets(opts, out_folder):
    """One :class:`ReverbDynamicMixing` per split (epoch = split index)."""
    index = index_speakers(opts["speech_folder"], min_speakers=2)
    valid, test = opts["speaker_split"]
    groups = (list(index),) * 3 if valid == test == 0 else split_speakers(index, valid, test,
                                                                          opts["seed"])
    if min(map(len, groups)) < 2:
        raise ValueError(f"Speaker split {list(map(len, groups))} (train, valid, test) of "
                         f"{opts['speech_folder']}: every split needs 2 speakers; hold out "
                         "more (--held-out 2 2) or use every speaker everywhere (--held-out 0 0).")
    datasets = []
    for j, speakers in enumerate(groups):
        ds = ReverbDynamicMixing(
            opts["speech_folder"], rir_bank=opts["rir_bank"],
            reverb_target="anechoic" if opts["layout"] == "whamr" else "reverberant",
            early_ms=opts["early_ms"], extra_targets=tuple(opts["extra_targets"]),
            rir_choice="index" if opts["simulate_bank"] else "random",
            room_offset=sum(opts["n"][:j]), sample_rate=opts["sample_rate"], num_spks=2,
            epoch_size=opts["n"][j], segment_seconds=opts["segment_seconds"],
            length_mode=opts["mode"], gain_db_range=opts["gain_db_range"],
            noise_folder=opts["noise_folder"], snr_db_range=opts["snr_db_range"],
            seed=opts["seed"], cache_folder=Path(out_folder) / "cache", speakers=speakers,
        )  # fmt: skip
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
        rate = f"wav{opts['sample_rate'] // 1000}k"
        base, name = Path(out_folder) / rate / opts["mode"] / split, f"{spec['id']}.wav"
        anechoic = [sigs["s1"].astype(np.float64), sigs["s2"].astype(np.float64)]
        folders = {"s1_anechoic": anechoic[0], "s2_anechoic": anechoic[1],
                   "s1_reverb": images[0], "s2_reverb": images[1],
                   "mix_clean_anechoic": sum(anechoic), "mix_clean_reverb": sum(images)}  # fmt: skip
        if noise is not None:
            folders.update({"noise": noise, "mix_both_anechoic": sum(anechoic) + noise,
                            "mix_both_reverb": sum(images) + noise})  # fmt: skip
        for kind, xs in extra.items():
            if kind == "early":  # anechoic and reverberant are written above
                folders.update({f"s{k + 1}_{kind}": x for k, x in enumerate(xs)})
        for folder, x in folders.items():
            _write(base / folder / name, x, opts)
        return {"mix_wav": str(Path(rate, opts["mode"], split, "mix_clean_reverb", name))}, room
    d = Path(split, spec["id"], room, "_".join(spec["speakers"]))
    files = {"mix.wav": sigs["mix"], **{f"spk{k + 1}_reverb.wav": x for k, x in enumerate(images)}}
    files.update({} if noise is None else {"noise.wav": noise})
    for kind, xs in extra.items():
        if kind != "reverberant":  # written above as spk*_reverb
            files.update({f"spk{k + 1}_{kind}.wav": x for k, x in enumerate(xs)})
    for fname, x in files.items():
        _write(Path(out_folder) / d / fname, x, opts)
    return {"mix_wav": str(d / "mix.wav")}, room


def _row(opts, ds, split_index, split, idx, spec, written, room):
    """Metadata row of one mixture (paths relative to the speech/noise roots)."""
    row = {"split": split, "split_index": split_index, "index": idx, "ID": spec["id"],
           "seed": opts["seed"], "length": spec["length"], "room_id": room}  # fmt: skip
    for k, (f, src) in enumerate(zip(spec["files"], spec["sources"]), 1):
        info = ds.bank.info(spec["rirs"][k - 1])
        row.update({f"s{k}_file": _rel(f, opts["speech_folder"]),
                    f"s{k}_speaker": spec["speakers"][k - 1], f"s{k}_begin": src["begin"],
                    f"s{k}_length": src["length"], f"s{k}_offset": src["offset"],
                    f"s{k}_gain_db": repr(spec["gains_db"][k - 1]), f"s{k}_rir": info["rir_id"],
                    f"s{k}_rt60_target": info.get("rt60_target", ""),
                    f"s{k}_rt60_measured": info.get("rt60_measured", "")})  # fmt: skip
    nz = spec["noise"] or {}
    row.update({"noise_file": _rel(nz["file"], opts["noise_folder"]) if nz else "",
                "noise_begin": nz.get("begin", ""), "noise_roll": nz.get("roll", ""),
                "snr_db": "" if spec["snr_db"] is None else repr(spec["snr_db"]), **written})
    return row


def _init_worker(state):
    _STATE.update(state)


def _job(job):
    """Render and write one mixture (a worker task); returns its metadata row."""
    j, idx, spec = job
    opts, out_folder, ds = _STATE["opts"], _STATE["out"], _STATE["datasets"][j]
    split = SPLITS[opts["layout"]][j]
    spec = spec or ds.draw(idx)
    written, room = _write_mixture(out_folder, opts, ds, split, spec)
    return _row(opts, ds, j, split, idx, spec, written, room)


def _run(opts, out_folder, jobs, num_workers):
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    if opts["simulate_bank"]:
        opts["rir_bank"] = str(out_folder.absolute() / "rir_bank")
        make_rir_bank(opts["rir_bank"], sum(opts["n"]), opts["sample_rate"], opts["seed"],
                      num_workers, opts["room_ranges"], 2, 1, opts["calibrate"])  # fmt: skip
    datasets = _datasets(opts, out_folder)
    jobs = jobs or [(j, i, None) for j in range(3) for i in range(opts["n"][j])]
    state = {"opts": opts, "out": out_folder, "datasets": datasets}
    rows = pool_map(_job, jobs, num_workers, f"Writing mixtures -> {out_folder}", "mix",
                    _init_worker, (state,))  # fmt: skip
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out_folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_folder / "metadata.json").write_text(json.dumps(opts, indent=1))
    logger.info("Wrote %d mixtures (%s layout) and their metadata to %s.", len(rows),
                opts["layout"], out_folder)  # fmt: skip
    return out_folder / "metadata.csv"


def make_mixtures(speech_folder, out_folder, layout="whamr", n=(20000, 5000, 3000),
                  noise_folder=None, rir_bank=None, sample_rate=None, mode="min",
                  segment_seconds=None, seed=1234, num_workers=1, snr_db_range=(-6.0, 3.0),
                  gain_db_range=(-2.5, 2.5), speaker_split=(0.1, 0.1), room_ranges=None,
                  early_ms=50.0, extra_targets=(), subtype="PCM_16", calibrate=4):  # fmt: skip
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
    opts = _options(speech_folder, out_folder, layout, n, noise_folder, rir_bank, sample_rate,
                    mode, segment_seconds, seed, snr_db_range, gain_db_range, speaker_split,
                    room_ranges, early_ms, extra_targets, subtype, calibrate)  # fmt: skip
    return _run(opts, out_folder, None, num_workers)


def regenerate(metadata_csv, out_folder, num_workers=1, speech_folder=None, noise_folder=None,
               rir_bank=None):  # fmt: skip
    """Re-create a dataset from its ``metadata.csv`` (and ``metadata.json``) exactly.

    Every mixture is rendered from its row alone (no random draw), so an
    edited row re-creates the edited mixture. The folders default to those
    recorded in ``metadata.json``; pass them if the data moved.

    Returns
    -------
    Path
        The new ``metadata.csv`` (equal to the old one).
    """
    metadata_csv = Path(metadata_csv)
    if not metadata_csv.is_file():
        raise FileNotFoundError(f"{metadata_csv} does not exist: pass the metadata.csv "
                                "written by sb-mamba-make-mixtures.")  # fmt: skip
    opts = json.loads((metadata_csv.parent / "metadata.json").read_text())
    for key, value in (("speech_folder", speech_folder), ("noise_folder", noise_folder),
                       ("rir_bank", rir_bank)):  # fmt: skip
        opts[key] = str(Path(value).absolute()) if value is not None else opts[key]
    opts["simulate_bank"] = False  # the bank exists: read it, as recorded
    with open(metadata_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    jobs = []
    for row in rows:
        spec = {"id": row["ID"], "length": int(row["length"]), "snr_db": None, "noise": None,
                "speakers": [row["s1_speaker"], row["s2_speaker"]],
                "files": [os.path.join(opts["speech_folder"], row[f"s{k}_file"]) for k in (1, 2)],
                "gains_db": [float(row[f"s{k}_gain_db"]) for k in (1, 2)],
                "rirs": [row[f"s{k}_rir"] for k in (1, 2)],
                "sources": [{"begin": int(row[f"s{k}_begin"]), "length": int(row[f"s{k}_length"]),
                             "offset": int(row[f"s{k}_offset"])} for k in (1, 2)]}  # fmt: skip
        if row["noise_file"]:
            spec["noise"] = {"file": os.path.join(opts["noise_folder"], row["noise_file"]),
                             "begin": int(row["noise_begin"]), "roll": int(row["noise_roll"])}
            spec["snr_db"] = float(row["snr_db"])
        jobs.append((int(row["split_index"]), int(row["index"]), spec))
    return _run(opts, out_folder, jobs, num_workers)


def main(argv=None):
    """Command line of :func:`make_mixtures` / :func:`regenerate`."""
    p = argparse.ArgumentParser(
        prog="sb-mamba-make-mixtures",
        description="Write a reverberant/noisy two-speaker dataset in the WHAMR! or Echo2Mix "
                    "layout (or re-create one from its metadata.csv).")  # fmt: skip
    p.add_argument("out", help="output dataset folder (the recipe's data_folder)")
    p.add_argument("--speech", help="speaker folder: <speaker>/<utt>.wav|flac")
    p.add_argument("--noise", help="noise folder (adds mix_both_* / noise.wav)")
    p.add_argument("--rir-bank", help="RIR bank or measured RIRs (default: simulate)")
    p.add_argument("--layout", choices=list(SPLITS), default="whamr")
    p.add_argument("--n", type=int, nargs=3, default=[20000, 5000, 3000],
                   metavar=("TRAIN", "VALID", "TEST"), help="mixtures per split")
    p.add_argument("--sample-rate", type=int, help="8000 (whamr) / 16000 (echo2mix)")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument("--segment-seconds", type=float, help="fixed length instead of --mode")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--snr", type=float, nargs=2, default=[-6.0, 3.0], metavar=("LOW", "HIGH"))
    p.add_argument("--gain", type=float, nargs=2, default=[-2.5, 2.5], metavar=("LOW", "HIGH"))
    p.add_argument("--rt60", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="RT60 range of simulated rooms, s (default 0.1 1.0)")
    p.add_argument("--held-out", type=float, nargs=2, default=[0.1, 0.1],
                   metavar=("VALID", "TEST"), help="held-out speakers (fraction or count)")
    p.add_argument("--early-ms", type=float, default=50.0)
    p.add_argument("--extra-targets", nargs="*", default=[], choices=list(TARGETS))
    p.add_argument("--subtype", choices=["PCM_16", "FLOAT"], default="PCM_16")
    p.add_argument("--from-metadata", metavar="CSV", help="re-create from this metadata.csv")
    a = p.parse_args(argv)
    if a.from_metadata:
        regenerate(a.from_metadata, a.out, a.workers, a.speech, a.noise, a.rir_bank)
        return
    if a.speech is None:
        p.error("--speech is required (or --from-metadata).")
    held = [int(x) if float(x).is_integer() and x >= 1 else x for x in a.held_out]
    make_mixtures(a.speech, a.out, a.layout, a.n, a.noise, a.rir_bank, a.sample_rate, a.mode,
                  a.segment_seconds, a.seed, a.workers, a.snr, a.gain, held,
                  {"rt60": a.rt60} if a.rt60 else None, a.early_ms, a.extra_targets,
                  a.subtype)  # fmt: skip
