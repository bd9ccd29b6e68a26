"""CSV manifests of the separation datasets, and the dataset that reads them.

Each ``prepare_<name>(data_folder, save_folder, sample_rate, mode, num_spks,
skip_prep, check_audio, <layout options>)`` reads one dataset in its real
folder layout (WSJ0-2mix/3mix, WHAM!, WHAMR!, LibriMix, Echo2Mix) and writes
``save_folder/{train,valid,test}.csv`` with columns
``ID,duration,mix_wav,s1_wav,s2_wav[,s3_wav][,noise_wav]`` (duration in
seconds, absolute paths, unique IDs). A layout problem gives one error naming
the expected path; ``check_audio=True`` opens every header here, not in a
DataLoader worker. The options go to ``save_folder/prepare_options.json``: a
second call with the same options returns without reading the data again.

:func:`csv_dataset` turns one manifest (also those of
:func:`sb_mamba.dataio.librimini.prepare_librimini` and of
``DynamicMixingDataset.export``) into the dataset the training loop reads.

Authors
-------
 * sb_mamba developers
"""

import csv
import os
from pathlib import Path

import speechbrain as sb
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.audio import AudioError, audio_info, read_audio
from sb_mamba.dataio._store import (
    forget_options,
    same_options,
    store_options,
    write_csv,
)
from sb_mamba.errors import UserError

logger = get_logger(__name__)

MANIFEST_SPLITS = ("train", "valid", "test")  # the CSVs: {split}.csv
OPTIONS_FILE = "prepare_options.json"
RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}  # WSJ0-2mix, WHAM!, WHAMR!, LibriMix
# The on-disk layouts that sb-mamba make-mixtures writes (dataio.generate) and
# the preparations below read: manifest split -> the dataset's split folder,
# and the Echo2Mix file names of one example folder.
SPLIT_FOLDERS = {
    "whamr": {"train": "tr", "valid": "cv", "test": "tt"},
    "echo2mix": {"train": "train", "valid": "val", "test": "test"},
}
ECHO2MIX_FILES = {"mix": "mix.wav", "image": "spk{}_reverb.wav", "noise": "noise.wav"}
_TT = {split: [folder] for split, folder in SPLIT_FOLDERS["whamr"].items()}


def _require_dir(path, dataset, layout):
    """Raise one FileNotFoundError naming ``path``, the layout and what is there."""
    if path.is_dir():
        return
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    found = sorted(p.name for p in parent.iterdir())
    got = f"{parent} contains {found[:12]}" if found else f"{parent} is empty"
    raise FileNotFoundError(
        f"Expected {dataset} at {path} (layout {layout}); got: {got}. Point "
        "data_folder at the folder that holds this layout and check "
        "sample_rate, mode and num_spks."
    )


def _rate_mode_folder(folder, sample_rate, mode, dataset):
    """``folder/wav8k|wav16k/min|max`` after checking the two options."""
    if sample_rate not in RATE_FOLDERS:
        raise UserError(
            f"sample_rate={sample_rate}: {dataset} exists at 8000 or 16000 Hz "
            "only; set sample_rate to one of them."
        )
    _check_choice("mode", mode, ("min", "max"))
    return Path(folder) / RATE_FOLDERS[sample_rate] / mode


def _check_choice(name, value, choices):
    """UserError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"{name} must be one of {list(choices)}; got {value!r}.")


def _columns(num_spks, folder, noisy):
    """Column -> folder: ``s{i}_wav`` -> ``folder.format(i)`` (+ ``noise_wav`` -> ``noise``)."""
    columns = {f"s{i}_wav": folder.format(i) for i in range(1, num_spks + 1)}
    return columns | ({"noise_wav": "noise"} if noisy else {})


def _source(path, mix_wav):
    """``str(path)``, or one FileNotFoundError naming the missing file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing (it belongs to the mixture {mix_wav}): the dataset "
            "is incomplete; re-generate or re-download it."
        )
    return str(path)


def _folder_rows(split_dir, mix, others, prefix=""):
    """One row per ``split_dir/mix/*.wav``; ``others`` maps column -> folder."""
    mixes = sorted(
        p for p in (split_dir / mix).glob("*.wav") if not p.name.startswith(".")
    )  # not temporary files of a killed write
    if not mixes:
        raise FileNotFoundError(
            f"No .wav files in {split_dir / mix}: the dataset is incomplete; "
            "re-generate or re-download it."
        )
    return [
        {"ID": prefix + wav.stem, "mix_wav": str(wav)}
        | {col: _source(split_dir / folder / wav.name, wav) for col, folder in others.items()}
        for wav in mixes
    ]


def _standard(
    dataset,
    data_folder,
    save_folder,
    sample_rate,
    mode,
    skip_prep,
    check_audio,
    options,
    subsets,
    mix,
    others,
    root=None,
):
    """Prepare ``wav8k|wav16k/min|max/<set>/<folder>``; ``subsets``: split -> sets,
    ``others``: column -> folder, ``root=(sub, names)``: use ``data_folder/sub``."""
    sets = [s for split in MANIFEST_SPLITS for s in subsets[split]]
    layout = (
        f"{f'[{root[0]}/]' if root else ''}wav8k|wav16k/min|max/"
        f"{{{','.join(sets)}}}/{{{','.join([mix, *others.values()])}}}"
    )

    def collect(folder):
        if root and folder.name in root[1] and folder.name != root[0]:
            raise UserError(
                f"{folder} holds {folder.name} but num_spks={options['num_spks']}: "
                "set num_spks to match, or point data_folder at the other set."
            )
        if root and (folder / root[0]).is_dir():
            folder = folder / root[0]
        base = _rate_mode_folder(folder, sample_rate, mode, dataset)
        rows = {}
        for split in MANIFEST_SPLITS:
            rows[split] = []
            for subset in subsets[split]:
                for name in [mix, *others.values()]:
                    _require_dir(base / subset / name, dataset, layout)
                prefix = f"{subset}_" if len(subsets[split]) > 1 else ""
                rows[split] += _folder_rows(base / subset, mix, others, prefix)
        return rows

    options = {"sample_rate": sample_rate, "mode": mode, **options}
    return _prepare(
        dataset, layout, data_folder, save_folder, options, skip_prep, check_audio, collect
    )


def _read_headers(rows, split, sample_rate, check_audio):
    """Add ``duration`` (from the mixture header) and check every file if asked."""
    for row in tqdm(rows, desc=f"Reading {split} audio headers", dynamic_ncols=True):
        keys = [k for k in row if k.endswith("_wav")] if check_audio else ["mix_wav"]
        for key in keys:
            info = audio_info(row[key])  # AudioError on missing/corrupt/empty
            if check_audio and info.samplerate != sample_rate:
                raise AudioError(
                    f"{row[key]} is sampled at {info.samplerate} Hz but sample_rate="
                    f"{sample_rate} was asked. Use the {sample_rate} Hz version of the "
                    f"dataset (or resample the files to {sample_rate} Hz), or pass "
                    f"sample_rate={info.samplerate} to use them as they are."
                )
            if key == "mix_wav":
                row["duration"] = round(info.frames / info.samplerate, 5)


def _prepare(dataset, layout, data_folder, save_folder, options, skip_prep, check_audio, collect):
    """Shared driver: skip logic, folder checks, header reading, CSV writing."""
    save_folder = Path(save_folder)
    csvs = {split: save_folder / f"{split}.csv" for split in MANIFEST_SPLITS}
    if skip_prep:
        missing = [str(p) for p in csvs.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"skip_prep=True but {missing[0]} does not exist: run the data "
                "preparation once with skip_prep=False (unset skip_prep) to "
                f"create the CSV manifests in {save_folder}."
            )
        logger.info("skip_prep=True: using the CSVs in %s as they are.", save_folder)
        return csvs
    data_folder = Path(os.path.abspath(data_folder))
    options = {"dataset": dataset, "data_folder": str(data_folder), **options}
    opts_file = save_folder / OPTIONS_FILE
    checked = {**options, "check_audio": True}  # a checked preparation does for both
    if same_options(opts_file, checked, csvs.values()) or (
        not check_audio
        and same_options(opts_file, {**checked, "check_audio": False}, csvs.values())
    ):
        logger.info(
            "%s CSVs in %s already prepared with the same options; skipping data preparation.",
            dataset,
            save_folder,
        )
        return csvs
    if not data_folder.is_dir() or not any(data_folder.iterdir()):
        state = "is empty" if data_folder.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"data_folder {data_folder} {state}. Expected {dataset} there (layout "
            f"{layout}): download or generate the dataset and pass its path."
        )
    rows = collect(data_folder)
    for split in MANIFEST_SPLITS:
        if len({row["ID"] for row in rows[split]}) != len(rows[split]):
            raise UserError(
                f"Duplicate IDs in the {split} split of {data_folder}: two "
                "mixtures share a name; remove or rename one."
            )
        _read_headers(rows[split], split, options["sample_rate"], check_audio)
    forget_options(opts_file)  # an interrupted run must not look complete
    for split, path in csvs.items():
        columns = ["ID", "duration"] + [k for k in rows[split][0] if k.endswith("_wav")]
        write_csv(path, rows[split], columns)
        logger.info("Wrote %s (%d mixtures).", path, len(rows[split]))
    store_options(opts_file, {**options, "check_audio": check_audio})
    return csvs


def prepare_wsj0mix(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    num_spks=2,
    skip_prep=False,
    check_audio=True,
):
    """WSJ0-2mix / WSJ0-3mix: ``wav8k|wav16k/min|max/{tr,cv,tt}/{mix,s1,s2[,s3]}``.

    Splits tr, cv, tt become train, valid, test (``{split}.csv``).

    Arguments
    ---------
    data_folder : str or Path
        E.g. ``.../wsj0-mix/2speakers`` (``.../wsj0-mix`` is also accepted:
        its ``<num_spks>speakers`` sub-folder is used).
    save_folder : str or Path
        Where ``{train,valid,test}.csv`` and ``prepare_options.json`` go.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``); every file is checked.
    mode : str
        ``"min"`` or ``"max"``.
    num_spks : int
        2 or 3 (``3speakers`` has ``s3``).
    skip_prep : bool
        Use existing CSVs without touching anything (error if absent).
    check_audio : bool
        Open every header (else only the mixtures', for the durations).

    Returns
    -------
    dict
        Split name -> CSV path.

    Example
    -------
    >>> import tempfile, torch
    >>> from sb_mamba.audio import write_audio
    >>> root = tempfile.mkdtemp()
    >>> for split in ("tr", "cv", "tt"):
    ...     for sub in ("mix", "s1", "s2"):
    ...         write_audio(f"{root}/wav8k/min/{split}/{sub}/a_b.wav", torch.zeros(800), 8000)
    >>> csvs = prepare_wsj0mix(root, root + "/csv")
    >>> open(csvs["test"]).read().splitlines()[0]
    'ID,duration,mix_wav,s1_wav,s2_wav'
    """
    _check_choice("num_spks", num_spks, (2, 3))
    others = _columns(num_spks, "s{}", noisy=False)
    return _standard(
        f"WSJ0-{num_spks}mix",
        data_folder,
        save_folder,
        sample_rate,
        mode,
        skip_prep,
        check_audio,
        {"num_spks": num_spks},
        _TT,
        "mix",
        others,
        (f"{num_spks}speakers", ("2speakers", "3speakers")),
    )


def prepare_wham(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    num_spks=2,
    skip_prep=False,
    check_audio=True,
    mix="mix_both",
):
    """WHAM!: ``wav8k|wav16k/min|max/{tr,cv,tt}/{mix_both,mix_clean,s1,s2,noise}``.

    Arguments
    ---------
    data_folder, save_folder, sample_rate, mode, skip_prep, check_audio
        As in :func:`prepare_wsj0mix` (``data_folder`` holds ``wav8k``), which
        also describes the returned dict.
    num_spks : int
        Must be 2.
    mix : str
        ``"mix_both"`` (speech + noise; adds the ``noise_wav`` column from
        ``noise/``) or ``"mix_clean"`` (speech only).

    Example
    -------
    >>> prepare_wham("/no/such/wham", "/no/such/csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: data_folder /no/such/wham does not exist. ...
    """
    _check_choice("num_spks", num_spks, (2,))
    _check_choice("mix", mix, ("mix_both", "mix_clean"))
    others = _columns(num_spks, "s{}", noisy=mix == "mix_both")
    return _standard(
        "WHAM!",
        data_folder,
        save_folder,
        sample_rate,
        mode,
        skip_prep,
        check_audio,
        {"num_spks": num_spks, "mix": mix},
        _TT,
        mix,
        others,
    )


def prepare_whamr(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    num_spks=2,
    skip_prep=False,
    check_audio=True,
    mix="mix_both_reverb",
    targets="anechoic",
):
    """WHAMR!: ``wav8k|wav16k/min|max/{tr,cv,tt}/{mix_*,s1_*,s2_*,noise}``.

    Arguments
    ---------
    data_folder, save_folder, sample_rate, mode, num_spks, skip_prep, check_audio
        As in :func:`prepare_wham` (and the returned dict).
    mix : str
        ``mix_both_reverb`` (default), ``mix_clean_reverb``,
        ``mix_both_anechoic`` or ``mix_clean_anechoic``; the ``mix_both_*``
        ones add the ``noise_wav`` column from ``noise/``.
    targets : str
        ``"anechoic"`` (``s*_anechoic``: separation + dereverberation) or
        ``"reverb"`` (``s*_reverb``: separation only), for EVERY split;
        ``"early"`` (``s*_early``, direct path + early reflections) exists
        only in data written by ``sb-mamba make-mixtures --extra-targets early``.
        SpeechBrain's recipe trains on anechoic but, with ``dereverberate=True``,
        validates and tests on reverberant targets; we do not copy that.
    """
    _check_choice("num_spks", num_spks, (2,))
    _check_choice(
        "mix",
        mix,
        ("mix_both_reverb", "mix_clean_reverb", "mix_both_anechoic", "mix_clean_anechoic"),
    )
    _check_choice("targets", targets, ("anechoic", "reverb", "early"))
    others = _columns(num_spks, "s{}_" + targets, noisy=mix.startswith("mix_both"))
    options = {"num_spks": num_spks, "mix": mix, "targets": targets}
    return _standard(
        "WHAMR!",
        data_folder,
        save_folder,
        sample_rate,
        mode,
        skip_prep,
        check_audio,
        options,
        _TT,
        mix,
        others,
    )


def prepare_librimix(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    num_spks=2,
    skip_prep=False,
    check_audio=True,
    train_set="train-360",
    mix="mix_clean",
):
    """LibriMix: ``Libri2Mix|Libri3Mix/wav8k|wav16k/min|max/<set>/{mix_*,s1,s2[,s3],noise}``.

    Sets ``train-100``/``train-360``, ``dev`` and ``test`` become train,
    valid and test.

    Arguments
    ---------
    save_folder, sample_rate, mode, skip_prep, check_audio
        As in :func:`prepare_wsj0mix` (which also describes the returned dict).
    num_spks : int
        2 (``Libri2Mix``) or 3 (``Libri3Mix``).
    data_folder : str or Path
        The LibriMix root (holding ``Libri2Mix``) or ``Libri2Mix`` itself.
    train_set : str
        ``"train-360"``, ``"train-100"`` or ``"both"`` (IDs then start with
        the set name).
    mix : str
        ``"mix_clean"`` or ``"mix_both"`` (adds ``noise_wav`` from ``noise/``).
    """
    _check_choice("num_spks", num_spks, (2, 3))
    _check_choice("train_set", train_set, ("train-360", "train-100", "both"))
    _check_choice("mix", mix, ("mix_clean", "mix_both"))
    others = _columns(num_spks, "s{}", noisy=mix == "mix_both")
    train = ["train-100", "train-360"] if train_set == "both" else [train_set]
    subsets = {"train": train, "valid": ["dev"], "test": ["test"]}
    options = {"num_spks": num_spks, "train_set": train_set, "mix": mix}
    return _standard(
        f"Libri{num_spks}Mix",
        data_folder,
        save_folder,
        sample_rate,
        mode,
        skip_prep,
        check_audio,
        options,
        subsets,
        mix,
        others,
        (f"Libri{num_spks}Mix", ("Libri2Mix", "Libri3Mix")),
    )


def prepare_echo2mix(
    data_folder,
    save_folder,
    sample_rate=16000,
    mode="min",
    num_spks=2,
    skip_prep=False,
    check_audio=True,
):
    """Echo2Mix: ``{train,val,test}/<record>/<room>/<spks>/{mix,spk1_reverb,spk2_reverb}.wav``.

    16 kHz; the targets are the reverberant speaker images (separation
    only). ``val`` becomes valid; the ID is the path of the example folder
    relative to ``data_folder`` with ``/`` replaced by ``_``.

    Arguments
    ---------
    data_folder, save_folder, skip_prep, check_audio
        As in :func:`prepare_wsj0mix` (``data_folder`` holds ``train``), which
        also describes the returned dict.
    sample_rate : int
        16000 (every file is checked).
    mode : str
        Ignored (Echo2Mix has a single version).
    num_spks : int
        Must be 2.
    """
    _check_choice("num_spks", num_spks, (2,))
    layout = "{train,val,test}/<record>/<room>/<spks>/{mix,spk1_reverb,spk2_reverb}.wav"
    mix_name, image = ECHO2MIX_FILES["mix"], ECHO2MIX_FILES["image"]

    def collect(folder):
        rows = {}
        for split in MANIFEST_SPLITS:
            sub = SPLIT_FOLDERS["echo2mix"][split]
            _require_dir(folder / sub, "Echo2Mix", layout)
            mixes = sorted((folder / sub).rglob(mix_name))
            if not mixes:
                raise FileNotFoundError(
                    f"No <record>/<room>/<spks>/mix.wav under "
                    f"{folder / sub} (layout {layout}): re-download it."
                )
            rows[split] = [
                {"ID": "_".join(wav.parent.relative_to(folder).parts), "mix_wav": str(wav)}
                | {
                    f"s{i}_wav": _source(wav.parent / image.format(i), wav)
                    for i in range(1, num_spks + 1)
                }
                for wav in mixes
            ]
        return rows

    options = {"sample_rate": sample_rate, "num_spks": num_spks}
    return _prepare(
        "Echo2Mix", layout, data_folder, save_folder, options, skip_prep, check_audio, collect
    )


def csv_dataset(csv_path, num_spks, sample_rate, use_noise=None):
    """Build the dataset of one manifest.

    Items hold ``id``, ``mix_sig``, ``s1_sig`` ... and ``noise_sig``, the keys
    :class:`sb_mamba.training.brain.Separation` reads.

    Arguments
    ---------
    csv_path : str or Path
        Manifest with ``ID, duration, mix_wav, s1_wav, ...``.
    num_spks : int
        Number of ``s{i}_wav`` columns to read.
    sample_rate : int
        Rate every file must have (a mismatch raises a clear error).
    use_noise : bool, optional
        Also yield ``noise_sig``; default: when the CSV has ``noise_wav``.

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset

    Example
    -------
    >>> import tempfile, os, torch
    >>> from sb_mamba.audio import write_audio
    >>> d = tempfile.mkdtemp()
    >>> for k in ("mix", "s1", "s2"):
    ...     write_audio(os.path.join(d, k + ".wav"), torch.rand(800) - 0.5, 8000)
    >>> with open(os.path.join(d, "x.csv"), "w") as f:
    ...     _ = f.write("ID,duration,mix_wav,s1_wav,s2_wav\\n")
    ...     _ = f.write(f"a,0.1,{d}/mix.wav,{d}/s1.wav,{d}/s2.wav\\n")
    >>> ds = csv_dataset(os.path.join(d, "x.csv"), num_spks=2, sample_rate=8000)
    >>> ds[0]["s2_sig"].shape
    torch.Size([800])
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"Manifest {csv_path} not found: run the data preparation (set "
            "skip_prep: False) or check save_folder."
        )
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f), [])
    needed = ["ID", "mix_wav"] + [f"s{i + 1}_wav" for i in range(num_spks)]
    missing = [c for c in needed if c not in header]
    if missing:
        raise UserError(
            f"Manifest {csv_path} lacks the columns {missing} (num_spks={num_spks}); "
            "re-run the data preparation with the same num_spks."
        )
    if use_noise is None:
        use_noise = "noise_wav" in header
    keys = ["mix"] + [f"s{i + 1}" for i in range(num_spks)] + (["noise"] if use_noise else [])
    ds = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path)

    def make_pipeline(key):
        @sb.utils.data_pipeline.takes(f"{key}_wav")
        @sb.utils.data_pipeline.provides(f"{key}_sig")
        def pipeline(path):
            return read_audio(path, sample_rate)

        return pipeline

    for key in keys:
        ds.add_dynamic_item(make_pipeline(key))
    ds.set_output_keys(["id"] + [f"{k}_sig" for k in keys])
    return ds
