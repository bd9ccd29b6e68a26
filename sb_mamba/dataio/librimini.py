"""LibriMini's fixed valid and test mixtures.

:func:`prepare_librimini` writes the fixed valid and test mixtures of
LibriMini, the small real 8 kHz speech set bundled with the LibriMini recipe
(``recipes/LibriMini/data/{train,valid,test}/<speaker>/<utt>.flac``: 196
LibriSpeech readers, CC BY 4.0, split by speaker: 156 train readers with 39
minutes of full-length utterances, 20 valid and 20 test readers with 6 s
each). Training mixes the train speakers on the fly; validation and test
use fixed mixtures of the held-out speakers (deterministic for a seed).

Authors
-------
 * sb_mamba developers
"""

import shutil
from pathlib import Path

from speechbrain.utils.logger import get_logger

from sb_mamba.dataio._store import forget_options, same_options, store_options
from sb_mamba.dataio.mixing import ReverbDynamicMixing

logger = get_logger(__name__)


def prepare_librimini(
    data_folder,
    save_folder,
    sample_rate=8000,
    num_spks=2,
    skip_prep=False,
    n_valid=50,
    n_test=100,
    segment_seconds=4.0,
    noise_folder=None,
    snr_db_range=(0.0, 10.0),
    seed=4321,
    use_reverb=False,
    rir_bank=None,
    reverb_target="anechoic",
):
    """Write LibriMini's ``valid.csv`` and ``test.csv`` of fixed held-out mixtures.

    Arguments
    ---------
    data_folder : str or Path
        The LibriMini folder with ``train/``, ``valid/`` and ``test/`` (the
        LibriMini recipe bundles it in ``recipes/LibriMini/data``).
    save_folder : str or Path
        Where the mixtures, the CSVs and ``librimini_prep.json`` go.
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
        :class:`~sb_mamba.dataio.mixing.ReverbDynamicMixing`); the files
        ``s1``, ``s2`` are then the targets and ``mix`` the sum of the
        reverberant images (+ noise).

    Example
    -------
    >>> import tempfile, torch
    >>> from sb_mamba.audio import write_audio
    >>> root = Path(tempfile.mkdtemp())
    >>> for split in ("train", "valid", "test"):
    ...     for spk in "ab":
    ...         write_audio(root / "data" / split / spk / "u.wav", torch.randn(12000) / 9, 8000)
    >>> prepare_librimini(root / "data", root / "out", n_valid=2, n_test=2, segment_seconds=1.0)
    >>> sorted(p.name for p in (root / "out").glob("*.csv"))
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
                f"LibriMini expects {data_folder / split}/<speaker>/<utt>.flac (the "
                "LibriMini recipe bundles it in recipes/LibriMini/data); set data_folder "
                "to that folder."
            )
    options = dict(
        data_folder=str(data_folder.resolve()),
        sample_rate=sample_rate,
        num_spks=num_spks,
        n_valid=n_valid,
        n_test=n_test,
        segment_seconds=segment_seconds,
        noise_folder=str(noise_folder),
        snr_db_range=list(snr_db_range),
        seed=seed,
    )
    if use_reverb:  # (absent when off: earlier preparations stay valid)
        options.update(use_reverb=True, rir_bank=str(rir_bank), reverb_target=reverb_target)
    opt_file = save_folder / "librimini_prep.json"
    if same_options(opt_file, options, csvs):
        logger.info("LibriMini mixtures already prepared in %s; skipping.", save_folder)
        return
    forget_options(opt_file)  # an interrupted run must not look complete
    for split, n, offset in (("valid", n_valid, 1), ("test", n_test, 2)):
        ds = ReverbDynamicMixing(
            data_folder / split,
            sample_rate=sample_rate,
            num_spks=num_spks,
            epoch_size=n,
            segment_seconds=segment_seconds,
            noise_folder=noise_folder,
            snr_db_range=snr_db_range,
            seed=seed + offset,
            cache_folder=save_folder / "cache" if sample_rate != 8000 else None,
            use_reverb=use_reverb,
            rir_bank=rir_bank,
            reverb_target=reverb_target,
        )
        target = save_folder / "mixtures" / split
        if target.exists():
            shutil.rmtree(target)
        csv_file = ds.export(target, n, subtype="PCM_16")
        shutil.copy(csv_file, save_folder / f"{split}.csv")
    store_options(opt_file, options)
    logger.info("LibriMini: %d valid and %d test mixtures in %s.", n_valid, n_test, save_folder)
