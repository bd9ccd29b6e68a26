"""RIR banks for reverberant separation data, simulated or measured.

Simulating a room takes 0.1 s (RT60 0.2 s) to several seconds (RT60 0.9 s),
so training never simulates: :func:`make_rir_bank` precomputes rooms once,
in parallel, and mixing (:mod:`sb_mamba.dataio.mixing`) reads them back
(:class:`RirBank`) and convolves by FFT. The room simulation itself is
:mod:`sb_mamba.dataio.room`. ``sb-mamba make-rir-bank`` is the command line
(:func:`add_arguments`, :func:`run`).

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
from pathlib import Path

import numpy as np
import soundfile as sf
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import AudioError, audio_info, resample, write_audio
from sb_mamba.dataio._pool import pool_map
from sb_mamba.dataio._store import (
    forget_options,
    same_options,
    store_options,
    write_csv,
)
from sb_mamba.dataio.room import (
    draw_room,
    measure_rt60,
    room_ranges,
    simulate_room,
    windowed_direct,
)
from sb_mamba.errors import UserError

logger = get_logger(__name__)

BANK_CSV = "rir_bank.csv"
BANK_OPTIONS = "rir_bank.json"
FIELDS = [
    "rir_id",
    "room_id",
    "source",
    "wav",
    "direct_wav",
    "sample_rate",
    "channels",
    "frames",
    "direct_index",
    "rt60_target",
    "rt60_measured",
    "absorption",
    "absorption_sabine",
    "max_order",
    "room",
    "mics",
    "position",
    "distance",
    "seed",
    "room_index",
    "kind",
    "license",
]


def _vec(x):
    return ";".join(f"{v:.4f}" for v in x)


def _make_room(job):
    """Simulate room ``index`` of a bank and write its files (one worker task)."""
    folder, index, opts = job
    params = draw_room(
        np.random.default_rng([opts["seed"], index]),
        opts["ranges"],
        opts["sources_per_room"],
        opts["num_mics"],
    )
    out = simulate_room(params, opts["sample_rate"], opts["calibrate"])
    room_id, rows = f"room{index:06d}", []
    for k, pos in enumerate(params["sources"]):
        rir_id = f"{room_id}_s{k}"
        paths = {"wav": f"rirs/{rir_id}.wav", "direct_wav": f"rirs/{rir_id}_direct.wav"}
        for key, x in (("wav", out["rirs"][k]), ("direct_wav", out["direct"][k])):
            write_audio(folder / paths[key], x.T.astype(np.float32), opts["sample_rate"])
        centre = np.mean(params["mics"], axis=0)
        rows.append(
            {
                "rir_id": rir_id,
                "room_id": room_id,
                "source": k,
                **paths,
                "sample_rate": opts["sample_rate"],
                "channels": len(params["mics"]),
                "frames": out["rirs"].shape[-1],
                "direct_index": int(out["direct_index"][k, 0]),
                "rt60_target": round(params["rt60"], 4),
                "rt60_measured": round(out["rt60_measured"], 4),
                "absorption": round(out["absorption"], 5),
                "absorption_sabine": round(out["absorption_sabine"], 5),
                "max_order": out["max_order"],
                "room": _vec(params["room"]),
                "mics": "|".join(_vec(m) for m in params["mics"]),
                "position": _vec(pos),
                "distance": round(float(np.linalg.norm(np.array(pos) - centre)), 4),
                "seed": opts["seed"],
                "room_index": index,
                "kind": "simulated",
                "license": "generated (sb_mamba, pyroomacoustics)",
            }
        )
    return rows


def make_rir_bank(
    folder,
    n,
    sample_rate=8000,
    seed=1234,
    num_workers=1,
    ranges=None,
    sources_per_room=2,
    num_mics=2,
    calibrate=4,
):
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
        Overrides of :data:`sb_mamba.dataio.room.WHAMR_RANGES`, e.g.
        ``{"rt60": [0.2, 0.6]}``.
    sources_per_room, num_mics : int
        Source positions (>= speakers per mixture) and mics per room.
    calibrate : int
        RT60 corrections per room (see :func:`sb_mamba.dataio.room.simulate_room`).

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
    for name, value, least in (
        ("n (rooms)", n, 1),
        ("sources_per_room", sources_per_room, 1),
        ("num_mics", num_mics, 1),
        ("sample_rate", sample_rate, 1),
        ("num_workers (--workers)", num_workers, 1),
        ("seed", seed, 0),
        ("calibrate", calibrate, 0),
    ):
        if value < least:
            raise UserError(f"{name} must be >= {least}; got {value}.")
    folder = Path(folder)
    opts = {
        "n": int(n),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "ranges": {k: list(v) for k, v in room_ranges(ranges).items()},
        "sources_per_room": int(sources_per_room),
        "num_mics": int(num_mics),
        "calibrate": int(calibrate),
    }
    csv_file, opts_file = folder / BANK_CSV, folder / BANK_OPTIONS
    if same_options(opts_file, opts, [csv_file]):
        logger.info("RIR bank %s already made with the same options; reusing it.", folder)
        return csv_file
    (folder / "rirs").mkdir(parents=True, exist_ok=True)
    forget_options(opts_file)  # an interrupted run must not look complete
    jobs = [(folder, i, opts) for i in range(n)]
    rows = pool_map(_make_room, jobs, num_workers, f"Simulating rooms -> {folder}", "room")
    rows = [row for room in rows for row in room]
    write_csv(csv_file, rows, FIELDS)
    store_options(opts_file, opts)
    err = np.array([r["rt60_measured"] / r["rt60_target"] - 1 for r in rows[::sources_per_room]])
    logger.info(
        "RIR bank %s: %d rooms; measured/target RT60 - 1: median %+.1f%%, "
        "%.0f%% of rooms within +-20%%.",
        folder,
        n,
        100 * np.median(err),
        100 * np.mean(np.abs(err) <= 0.2),
    )
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
        raise FileNotFoundError(
            f"RIR folder {rir_folder} does not exist: point rir_bank at "
            "a bank made by make_rir_bank or a folder of .wav RIRs."
        )
    files = sorted(p for p in rir_folder.rglob("*.wav") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(
            f"No .wav RIRs in {rir_folder}: make a bank with "
            "sb-mamba make-rir-bank or point rir_bank at measured RIRs."
        )
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
        rows.append(
            {
                "rir_id": path.stem,
                "room_id": room_id,
                "source": sum(r["room_id"] == room_id for r in rows),
                "wav": str(path.absolute()),
                "direct_wav": "",
                "sample_rate": info.samplerate,
                "channels": info.channels,
                "frames": info.frames,
                "direct_index": int(np.abs(h).argmax()),
                "rt60_measured": round(measure_rt60(h, info.samplerate), 4) if measure else "",
                "kind": "measured",
                "license": meta.get("license", ""),
            }
        )
    if bank_folder is not None:
        write_csv(Path(bank_folder) / BANK_CSV, rows, FIELDS)
        logger.info(
            "Indexed %d measured RIRs of %s into %s.",
            len(rows),
            rir_folder,
            Path(bank_folder) / BANK_CSV,
        )
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
            raise UserError(
                f"No room of the RIR bank {folder} has {min_sources} source "
                "positions: make the bank with sources_per_room >= num_spks."
            )
        if int(rows[0]["channels"]) <= self.mic:
            raise UserError(
                f"mic={mic} but the RIRs of {folder} have {rows[0]['channels']} "
                "channel(s): pick a channel they have."
            )
        self._cache = {}
        logger.info(
            "RIR bank %s: %d rooms, %d RIRs, used at %d Hz.",
            folder,
            len(self.rooms),
            sum(map(len, self.rooms)),
            self.sample_rate,
        )

    def __len__(self):
        return len(self.rooms)

    def _read(self, name, rate):
        path = self.folder / name  # absolute names stay absolute
        try:
            x = sf.read(str(path), dtype="float64", always_2d=True)[0][:, self.mic]
        except Exception as e:
            raise AudioError(f"Cannot read the RIR {path} ({e}): re-make the bank.") from e
        return resample(x, rate, self.sample_rate)

    def get(self, rir_id):
        """``full`` and ``direct`` RIR (float32) and ``direct_index`` of ``rir_id`` (cached)."""
        if rir_id not in self._cache:
            if rir_id not in self.rows:
                raise UserError(
                    f"RIR {rir_id!r} is not in the bank {self.folder}: pass the "
                    "bank the mixtures were made with."
                )
            row = self.rows[rir_id]
            rate = int(row["sample_rate"])
            full = self._read(row["wav"], rate)
            if row["direct_wav"]:
                direct = self._read(row["direct_wav"], rate)
            else:
                direct = windowed_direct(full, self.sample_rate)[0]
            self._cache[rir_id] = {
                "full": full.astype(np.float32),
                "direct": direct.astype(np.float32),
                "direct_index": int(np.abs(direct).argmax()),
            }
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
            f"`sb-mamba make-rir-bank {folder} -n 1000` (or make_rir_bank) or point "
            "rir_bank at a folder of measured RIRs."
        ) from None


def add_arguments(parser):
    """Add the arguments of ``sb-mamba make-rir-bank`` to ``parser`` (see :func:`run`).

    Example
    -------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["bank", "-n", "8", "--rt60", "0.2", "0.4"])
    >>> args.rooms, args.rt60, args.sample_rate
    (8, [0.2, 0.4], 8000)
    """
    if parser.description is None:
        parser.description = (
            "Simulate a bank of room impulse responses (WHAMR! rooms), or "
            "index a folder of measured ones, for reverberant mixing."
        )
    parser.add_argument("folder", help="output bank folder")
    parser.add_argument("-n", "--rooms", type=int, default=1000, help="rooms to simulate")
    parser.add_argument("--sample-rate", type=int, default=8000, help="rate of the RIRs")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workers", type=int, default=1, help="simulation processes")
    parser.add_argument("--sources-per-room", type=int, default=2)
    parser.add_argument("--mics", type=int, default=2, help="mics per room")
    parser.add_argument(
        "--rt60",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="RT60 range, s (default 0.1 1.0, WHAMR!)",
    )
    parser.add_argument("--calibrate", type=int, default=4, help="RT60 corrections per room")
    parser.add_argument(
        "--index-measured",
        metavar="RIR_FOLDER",
        help="instead of simulating: index this folder of measured .wav RIRs",
    )


def run(args):
    """Make the bank of :func:`add_arguments`' namespace ``args``.

    Simulates ``args.rooms`` rooms with :func:`make_rir_bank`, or indexes
    ``args.index_measured`` with :func:`index_rir_folder`.

    Returns
    -------
    int
        0. A user error (a bad value, a missing folder) raises
        :class:`~sb_mamba.errors.UserError` or ``FileNotFoundError``.

    Example
    -------
    >>> import argparse, tempfile
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> run(parser.parse_args([tempfile.mkdtemp(), "-n", "1", "--rt60", "0.2", "0.2"]))
    0
    """
    if args.index_measured:
        index_rir_folder(args.index_measured, args.folder)
        return 0
    make_rir_bank(
        args.folder,
        args.rooms,
        sample_rate=args.sample_rate,
        seed=args.seed,
        num_workers=args.workers,
        ranges={"rt60": args.rt60} if args.rt60 else None,
        sources_per_room=args.sources_per_room,
        num_mics=args.mics,
        calibrate=args.calibrate,
    )
    return 0
