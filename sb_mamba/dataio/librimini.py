"""LibriMini: the bundled, real 8 kHz speech set for out-of-the-box training.

``recipes/LibriMini/data/{train,valid,test}/<speaker>/<utt>.flac`` holds 196
LibriSpeech readers (CC BY 4.0) split by speaker: 156 train readers (39 minutes,
full-length utterances), 20 valid and 20 test readers (6 s each).
Training uses dynamic mixing over the train speakers; validation and test
use fixed mixtures of the held-out speakers, written once by
:func:`prepare_librimini` (deterministic for a seed).

Authors
-------
 * sb_mamba developers
"""

import json
import shutil
from pathlib import Path

from speechbrain.utils.logger import get_logger

from sb_mamba.dataio.reverb_mixing import ReverbDynamicMixing

logger = get_logger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "recipes" / "LibriMini" / "data"


def default_data_folder():
    """The bundled LibriMini folder (``recipes/LibriMini/data``), as a string.

    Example
    -------
    >>> Path(default_data_folder()).name
    'data'
    """
    return str(DEFAULT_DATA)


def prepare_librimini(
    data_folder, save_folder, sample_rate=8000, num_spks=2, skip_prep=False,
    n_valid=50, n_test=100, segment_seconds=4.0, noise_folder=None,
    snr_db_range=(0.0, 10.0), seed=4321, use_reverb=False, rir_bank=None,
    reverb_target="anechoic",
):  # fmt: skip
    """Write ``valid.csv`` and ``test.csv`` of fixed held-out mixtures.

    Arguments
    ---------
    data_folder : str or Path
        The LibriMini folder with ``train/``, ``valid/`` and ``test/``.
    save_folder : str or Path
        Where the mixtures and CSVs go.
    sample_rate : int
        Output rate (the bundled audio is 8 kHz; other rates are resampled).
    num_spks : int
        Speakers per mixture.
    skip_prep : bool
        Do nothing (the CSVs must exist).
    n_valid, n_test : int
        Number of fixed mixtures.
    segment_seconds : float
        Mixture length.
    noise_folder : str, optional
        Add noise (e.g. ``shared/data/noise``) at ``snr_db_range``.
    snr_db_range : tuple
        Speech-to-noise ratio range, dB.
    seed : int
        Seed of the fixed mixtures.
    use_reverb, rir_bank, reverb_target
        Reverberant mixtures (see
        :class:`~sb_mamba.dataio.reverb_mixing.ReverbDynamicMixing`); the
        files ``s1``, ``s2`` are then the targets and ``mix`` the sum of
        the reverberant images (+ noise).

    Example
    -------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> prepare_librimini(DEFAULT_DATA, out, n_valid=2, n_test=2, segment_seconds=1.0)
    >>> sorted(p.name for p in Path(out).glob("*.csv"))
    ['test.csv', 'valid.csv']
    """
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    csvs = [save_folder / "valid.csv", save_folder / "test.csv"]
    if skip_prep:
        if not all(c.is_file() for c in csvs):
            raise FileNotFoundError(
                f"skip_prep is set but {csvs[0]} / {csvs[1]} do not exist: run once "
                "with skip_prep: False."
            )
        return
    for split in ("train", "valid", "test"):
        if not (data_folder / split).is_dir():
            raise FileNotFoundError(
                f"LibriMini expects {data_folder / split}/<speaker>/<utt>.flac "
                f"(bundled at {DEFAULT_DATA}); set data_folder to that folder."
            )
    options = dict(
        data_folder=str(data_folder.resolve()), sample_rate=sample_rate, num_spks=num_spks,
        n_valid=n_valid, n_test=n_test, segment_seconds=segment_seconds,
        noise_folder=str(noise_folder), snr_db_range=list(snr_db_range), seed=seed,
    )  # fmt: skip
    if use_reverb:  # (absent when off: earlier preparations stay valid)
        options.update(use_reverb=True, rir_bank=str(rir_bank), reverb_target=reverb_target)
    opt_file = save_folder / "librimini_prep.json"
    if all(c.is_file() for c in csvs) and opt_file.is_file():
        if json.loads(opt_file.read_text()) == options:
            logger.info("LibriMini mixtures already prepared in %s; skipping.", save_folder)
            return
    for split, n, offset in (("valid", n_valid, 1), ("test", n_test, 2)):
        ds = ReverbDynamicMixing(
            data_folder / split, sample_rate=sample_rate, num_spks=num_spks, epoch_size=n,
            segment_seconds=segment_seconds, noise_folder=noise_folder,
            snr_db_range=snr_db_range, seed=seed + offset,
            cache_folder=save_folder / "cache" if sample_rate != 8000 else None,
            use_reverb=use_reverb, rir_bank=rir_bank, reverb_target=reverb_target,
        )  # fmt: skip
        target = save_folder / "mixtures" / split
        if target.exists():
            shutil.rmtree(target)
        csv_file = ds.export(target, n, subtype="PCM_16")
        shutil.copy(csv_file, save_folder / f"{split}.csv")
    opt_file.write_text(json.dumps(options))
    logger.info("LibriMini: %d valid and %d test mixtures in %s.", n_valid, n_test, save_folder)
