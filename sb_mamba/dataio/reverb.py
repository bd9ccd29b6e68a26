"""Reverberation for separation data: RIR banks, simulated or measured.

Simulating a room takes 0.1 s (RT60 0.2 s) to several seconds (RT60 0.9 s),
so training never simulates: :func:`make_rir_bank` precomputes rooms once,
in parallel, and mixing reads them back and convolves by FFT
(:class:`RirBank`). The room simulation itself is
:mod:`sb_mamba.dataio.room` (re-exported here).

A bank folder holds ``rir_bank.csv`` (one row per source position) and
``rirs/<room>_s<k>.wav`` (the full RIR, one channel per mic) plus
``rirs/<room>_s<k>_direct.wav`` (its direct path), 32-bit float. Columns:
``rir_id, room_id, source, wav, direct_wav, sample_rate, channels, frames,
direct_index, rt60_target, rt60_measured, absorption, absorption_sabine,
max_order, room, mics, position, distance, seed, room_index, kind, license``
(vectors as ``x;y;z``, mics separated by ``|``). Room ``i`` is drawn from
``numpy.random.default_rng([seed, i])``, so a bank is the same for any
number of workers and any single room can be re-made from its row.

A folder of measured RIRs (one mono or multi-channel ``.wav`` per source
position, like ``shared/data/rir``) is a bank too: :func:`index_rir_folder`
lists it (room = the ``room`` column of a ``rir.tsv`` if present, else the
file name up to its first ``_``), and :class:`RirBank` indexes such a folder
on the fly when it has no ``rir_bank.csv``. Their direct path is a Hann
window of +-1 ms around the largest tap.

Authors
-------
 * sb_mamba developers
"""

import csv
import json
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.audio import AudioError, audio_info, write_audio
from sb_mamba.dataio.room import (  # noqa: F401 (re-exported)
    SIM_RATE,
    WHAMR_RANGES,
    draw_room,
    early_rir,
    measure_rt60,
    reverberate,
    room_ranges,
    simulate_room,
    windowed_direct,
)

logger = get_logger(__name__)

BANK_CSV = "rir_bank.csv"
BANK_OPTIONS = "rir_bank.json"
FIELDS = ["rir_id", "room_id", "source", "wav", "direct_wav", "sample_rate", "channels",
          "frames", "direct_index", "rt60_target", "rt60_measured", "absorption",
          "absorption_sabine", "max_order", "room", "mics", "position", "distance", "seed",
          "room_index", "kind", "license"]  # fmt: skip


def _vec(x):
    return ";".join(f"{v:.4f}" for v in x)


def _make_room(job):
    """Simulate room ``index`` of a bank and write its files (one worker task)."""
    folder, index, opts = job
    params = draw_room(np.random.default_rng([opts["seed"], index]), opts["ranges"],
                       opts["sources_per_room"], opts["num_mics"])  # fmt: skip
    out = simulate_room(params, opts["sample_rate"], opts["calibrate"])
    room_id, rows = f"room{index:06d}", []
    for k, pos in enumerate(params["sources"]):
        rir_id = f"{room_id}_s{k}"
        paths = {"wav": f"rirs/{rir_id}.wav", "direct_wav": f"rirs/{rir_id}_direct.wav"}
        for key, x in (("wav", out["rirs"][k]), ("direct_wav", out["direct"][k])):
            write_audio(folder / paths[key], x.T.astype(np.float32), opts["sample_rate"])
        centre = np.mean(params["mics"], axis=0)
        rows.append({
            "rir_id": rir_id, "room_id": room_id, "source": k, **paths,
            "sample_rate": opts["sample_rate"], "channels": len(params["mics"]),
            "frames": out["rirs"].shape[-1], "direct_index": int(out["direct_index"][k, 0]),
            "rt60_target": round(params["rt60"], 4),
            "rt60_measured": round(out["rt60_measured"], 4),
            "absorption": round(out["absorption"], 5),
            "absorption_sabine": round(out["absorption_sabine"], 5),
            "max_order": out["max_order"], "room": _vec(params["room"]),
            "mics": "|".join(_vec(m) for m in params["mics"]), "position": _vec(pos),
            "distance": round(float(np.linalg.norm(np.array(pos) - centre)), 4),
            "seed": opts["seed"], "room_index": index, "kind": "simulated",
            "license": "generated (sb_mamba, pyroomacoustics)",
        })  # fmt: skip
    return rows


def _write_csv(path, rows):
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in FIELDS} for row in rows)
    os.replace(tmp, path)


def pool_map(fn, jobs, num_workers, desc, unit, initializer=None, initargs=()):
    """``[fn(job) for job in jobs]`` in ``num_workers`` processes, in order, with tqdm.

    ``initializer(*initargs)`` runs once per process (in this one when
    ``num_workers`` is 1).

    Example
    -------
    >>> pool_map(abs, [-1, -2, 3], 2, "abs", "x")
    [1, 2, 3]
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1; got {num_workers}.")
    bar = dict(total=len(jobs), desc=desc, unit=unit, dynamic_ncols=True)
    if num_workers == 1 or len(jobs) < 2:
        if initializer is not None:
            initializer(*initargs)
        return [fn(job) for job in tqdm(jobs, **bar)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(min(num_workers, len(jobs)), initializer, initargs) as pool:
        return list(tqdm(pool.imap(fn, jobs), **bar))


def make_rir_bank(folder, n, sample_rate=8000, seed=1234, num_workers=1, ranges=None,
                  sources_per_room=2, num_mics=2, calibrate=4):  # fmt: skip
    """Simulate ``n`` rooms into ``folder`` (reused if already made alike).

    Arguments
    ---------
    folder : str or Path
        Output folder (``rir_bank.csv``, ``rir_bank.json``, ``rirs/``).
    n : int
        Number of rooms.
    sample_rate : int
        Rate of the stored RIRs (simulated at 16 kHz and resampled).
    seed : int
        Room ``i`` is drawn from ``default_rng([seed, i])``.
    num_workers : int
        Simulation processes (the result does not depend on it).
    ranges : dict, optional
        Overrides of :data:`WHAMR_RANGES`, e.g. ``{"rt60": [0.2, 0.6]}``.
    sources_per_room, num_mics : int
        Source positions (>= speakers per mixture) and mics per room.
    calibrate : int
        RT60 corrections per room (see :func:`simulate_room`).

    Returns
    -------
    Path
        The CSV file.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> csv_file = make_rir_bank(folder, 1, ranges={"rt60": [0.2, 0.2]})
    >>> len(RirBank(folder, 8000)), sf.read(f"{folder}/rirs/room000000_s0.wav")[0].shape[1]
    (1, 2)
    """
    if n < 1 or sources_per_room < 1 or num_mics < 1:
        raise ValueError("n, sources_per_room and num_mics must be >= 1.")
    folder = Path(folder)
    opts = {"n": int(n), "sample_rate": int(sample_rate), "seed": int(seed),
            "ranges": {k: list(v) for k, v in room_ranges(ranges).items()},
            "sources_per_room": int(sources_per_room), "num_mics": int(num_mics),
            "calibrate": int(calibrate)}  # fmt: skip
    csv_file, opts_file = folder / BANK_CSV, folder / BANK_OPTIONS
    if csv_file.is_file() and opts_file.is_file() and json.loads(opts_file.read_text()) == opts:
        logger.info("RIR bank %s already made with the same options; reusing it.", folder)
        return csv_file
    (folder / "rirs").mkdir(parents=True, exist_ok=True)
    if opts_file.exists():
        opts_file.unlink()  # an interrupted run must not look complete
    jobs = [(folder, i, opts) for i in range(n)]
    rows = pool_map(_make_room, jobs, num_workers, f"Simulating rooms -> {folder}", "room")
    rows = [row for room in rows for row in room]
    _write_csv(csv_file, rows)
    opts_file.write_text(json.dumps(opts, indent=1))
    err = np.array([r["rt60_measured"] / r["rt60_target"] - 1 for r in rows[::sources_per_room]])
    logger.info("RIR bank %s: %d rooms; measured/target RT60 - 1: median %+.1f%%, "
                "%.0f%% of rooms within +-20%%.", folder, n, 100 * np.median(err),
                100 * np.mean(np.abs(err) <= 0.2))  # fmt: skip
    return csv_file


def index_rir_folder(rir_folder, bank_folder=None, measure=True):
    """Rows of a bank for a folder of measured RIRs (written if ``bank_folder``).

    Arguments
    ---------
    rir_folder : str or Path
        ``*.wav`` RIRs (searched recursively), optionally with a ``rir.tsv``
        holding ``rir_id``, ``room`` and ``license`` columns.
    bank_folder : str or Path, optional
        Write ``rir_bank.csv`` there (absolute paths to the wav files).
    measure : bool
        Fill ``rt60_measured`` (T30, ``measure_rt60``).

    Returns
    -------
    list of dict
        One row per file (see the module docstring).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> h = np.zeros(800); h[20] = 1.0
    >>> for name in ("roomA_1", "roomA_2", "roomB_1"): sf.write(f"{folder}/{name}.wav", h, 8000)
    >>> [row["room_id"] for row in index_rir_folder(folder, measure=False)]
    ['roomA', 'roomA', 'roomB']
    """
    rir_folder = Path(rir_folder)
    if not rir_folder.is_dir():
        raise FileNotFoundError(f"RIR folder {rir_folder} does not exist: point rir_bank at "
                                "a bank made by make_rir_bank or a folder of .wav RIRs.")
    files = sorted(p for p in rir_folder.rglob("*.wav") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"No .wav RIRs in {rir_folder}: make a bank with "
                                "sb-mamba-make-rir-bank or point rir_bank at measured RIRs.")
    table = {}
    if (rir_folder / "rir.tsv").is_file():
        with open(rir_folder / "rir.tsv", newline="") as f:
            table = {r["rir_id"]: r for r in csv.DictReader(f, delimiter="\t")}
    rows = []
    for path in files:
        info = audio_info(path)
        meta = table.get(path.stem, {})
        h = sf.read(str(path), dtype="float64", always_2d=True)[0][:, 0]
        room_id = meta.get("room") or path.stem.split("_")[0]
        rows.append({
            "rir_id": path.stem, "room_id": room_id,
            "source": sum(r["room_id"] == room_id for r in rows),
            "wav": str(path.absolute()), "direct_wav": "", "sample_rate": info.samplerate,
            "channels": info.channels, "frames": info.frames,
            "direct_index": int(np.abs(h).argmax()),
            "rt60_measured": round(measure_rt60(h, info.samplerate), 4) if measure else "",
            "kind": "measured", "license": meta.get("license", ""),
        })  # fmt: skip
    if bank_folder is not None:
        Path(bank_folder).mkdir(parents=True, exist_ok=True)
        _write_csv(Path(bank_folder) / BANK_CSV, rows)
        logger.info("Indexed %d measured RIRs of %s into %s.", len(rows), rir_folder,
                    Path(bank_folder) / BANK_CSV)  # fmt: skip
    return rows


class RirBank:
    """RIRs of a bank folder, grouped by room, read lazily at one rate.

    Arguments
    ---------
    folder : str or Path
        A folder with ``rir_bank.csv`` (:func:`make_rir_bank`,
        :func:`index_rir_folder`) or a plain folder of measured ``.wav`` RIRs.
    sample_rate : int
        Rate of the returned RIRs (resampled on first use if needed).
    mic : int
        Channel used (the reference mic).
    min_sources : int
        Rooms with fewer source positions are left out.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> h = np.zeros(1600); h[30] = 1.0; h[31:] = 0.01
    >>> for name in ("roomA_1", "roomA_2"): sf.write(f"{folder}/{name}.wav", h, 16000)
    >>> bank = RirBank(folder, 8000)
    >>> bank.rooms, bank.get("roomA_1")["full"].shape
    ([['roomA_1', 'roomA_2']], (800,))
    """

    def __init__(self, folder, sample_rate, mic=0, min_sources=1):
        self.folder, self.sample_rate, self.mic = Path(folder), int(sample_rate), int(mic)
        csv_file = self.folder / BANK_CSV
        if csv_file.is_file():
            with open(csv_file, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = index_rir_folder(self.folder, measure=False)
        self.rows, by_room = {r["rir_id"]: r for r in rows}, {}
        for r in rows:
            by_room.setdefault(r["room_id"], []).append(r["rir_id"])
        self.rooms = [ids for ids in by_room.values() if len(ids) >= min_sources]
        if not self.rooms:
            raise ValueError(f"No room of the RIR bank {folder} has {min_sources} source "
                             "positions: make the bank with sources_per_room >= num_spks.")
        if int(rows[0]["channels"]) <= self.mic:
            raise ValueError(f"mic={mic} but the RIRs of {folder} have {rows[0]['channels']} "
                             "channel(s).")  # fmt: skip
        self._cache = {}
        logger.info("RIR bank %s: %d rooms, %d RIRs, used at %d Hz.", folder,
                    len(self.rooms), sum(map(len, self.rooms)), self.sample_rate)  # fmt: skip

    def __len__(self):
        return len(self.rooms)

    def _read(self, name, rate):
        path = self.folder / name  # absolute names stay absolute
        try:
            x = sf.read(str(path), dtype="float64", always_2d=True)[0][:, self.mic]
        except Exception as e:
            raise AudioError(f"Cannot read the RIR {path} ({e}): re-make the bank.") from e
        if rate != self.sample_rate:
            g = math.gcd(rate, self.sample_rate)
            x = resample_poly(x, self.sample_rate // g, rate // g)
        return x

    def get(self, rir_id):
        """``full`` and ``direct`` RIR (float32) and ``direct_index`` of ``rir_id`` (cached)."""
        if rir_id not in self._cache:
            if rir_id not in self.rows:
                raise ValueError(f"RIR {rir_id!r} is not in the bank {self.folder}.")
            row = self.rows[rir_id]
            rate = int(row["sample_rate"])
            full = self._read(row["wav"], rate)
            if row["direct_wav"]:
                direct = self._read(row["direct_wav"], rate)
            else:
                direct = windowed_direct(full, self.sample_rate)[0]
            self._cache[rir_id] = {"full": full.astype(np.float32),
                                   "direct": direct.astype(np.float32),
                                   "direct_index": int(np.abs(direct).argmax())}  # fmt: skip
        return self._cache[rir_id]

    def info(self, rir_id):
        """The CSV row of ``rir_id``."""
        return self.rows[rir_id]


def check_bank(folder):
    """Raise FileNotFoundError naming the fix if ``folder`` is not a usable bank.

    Example
    -------
    >>> check_bank("/no/such/bank")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: RIR bank /no/such/bank has no rir_bank.csv and no .wav RIRs: ...
    """
    folder = Path(folder)
    if (folder / BANK_CSV).is_file():
        return
    try:
        audio_info(next(folder.rglob("*.wav")))
    except (StopIteration, OSError, AudioError):
        raise FileNotFoundError(
            f"RIR bank {folder} has no {BANK_CSV} and no .wav RIRs: make one with "
            f"`sb-mamba-make-rir-bank {folder} -n 1000` (or make_rir_bank) or point "
            "rir_bank at a folder of measured RIRs."
        ) from None


def main(argv=None):
    """``sb-mamba-make-rir-bank FOLDER -n N``: simulate a RIR bank (or index measured RIRs)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", help="output bank folder")
    parser.add_argument("-n", "--rooms", type=int, default=1000, help="rooms to simulate")
    parser.add_argument("--sample-rate", type=int, default=8000, help="rate of the RIRs")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workers", type=int, default=1, help="simulation processes")
    parser.add_argument("--sources-per-room", type=int, default=2)
    parser.add_argument("--mics", type=int, default=2, help="mics per room")
    parser.add_argument("--rt60", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="RT60 range, s (default 0.1 1.0, WHAMR!)")
    parser.add_argument("--calibrate", type=int, default=4, help="RT60 corrections per room")
    parser.add_argument("--index-measured", metavar="RIR_FOLDER",
                        help="instead of simulating: index this folder of measured .wav RIRs")
    args = parser.parse_args(argv)
    if args.index_measured:
        index_rir_folder(args.index_measured, args.folder)
        return
    make_rir_bank(args.folder, args.rooms, args.sample_rate, args.seed, args.workers,
                  {"rt60": args.rt60} if args.rt60 else None, args.sources_per_room,
                  args.mics, args.calibrate)  # fmt: skip
