"""SpeechBrain datasets over the separation CSV manifests.

The CSVs written by :mod:`sb_mamba.dataio.prepare` (and by dynamic mixing's
``export``) have the columns ``ID, duration, mix_wav, s1_wav ... s{S}_wav``
and optionally ``noise_wav``. :func:`csv_dataset` turns one into a
``DynamicItemDataset`` yielding ``id``, ``mix_sig``, ``s1_sig`` ... and
``noise_sig``, the keys :class:`sb_mamba.training.brain.Separation` reads.

Authors
-------
 * sb_mamba developers
"""

import csv
from pathlib import Path

import speechbrain as sb

from sb_mamba.audio import read_audio


def csv_dataset(csv_path, num_spks, sample_rate, use_noise=None):
    """Build the dataset of one manifest.

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
        raise ValueError(
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
