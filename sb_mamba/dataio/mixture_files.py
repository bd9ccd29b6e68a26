"""Rendered mixtures as audio files: exact 16-bit sums, and fixed sets with their CSV.

:func:`file_signals` turns a mixture rendered by
:meth:`sb_mamba.dataio.mixing.DynamicMixingDataset.render` into the signals
to write, so that the written mixture is still the exact sum of the written
parts; :func:`export_mixtures` writes a fixed valid/test set and its CSV
manifest (``DynamicMixingDataset.export``); :mod:`sb_mamba.dataio.generate`
writes whole datasets with them.

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

import numpy as np
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.audio import write_audio
from sb_mamba.dataio._store import write_csv
from sb_mamba.errors import UserError

logger = get_logger(__name__)

SUBTYPES = ("FLOAT", "PCM_16")  # the sample formats mixtures are written in


def check_subtype(subtype):
    """Raise UserError unless ``subtype`` is one of :data:`SUBTYPES`.

    Example
    -------
    >>> check_subtype("PCM_24")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: subtype must be 'FLOAT' or 'PCM_16'; got 'PCM_24'.
    """
    if subtype not in SUBTYPES:
        raise UserError(f"subtype must be 'FLOAT' or 'PCM_16'; got {subtype!r}.")


def file_signals(out, subtype="FLOAT"):
    """The float32 signals to write for a rendered mixture.

    Arguments
    ---------
    out : dict
        Output of :meth:`sb_mamba.dataio.mixing.DynamicMixingDataset.render`.
    subtype : str
        ``"FLOAT"`` keeps the signals as they are. ``"PCM_16"`` rounds each
        target, image and the noise to 16 bits and makes the mixture the sum
        of the rounded images and noise, so ``mix == sum(images) + noise``
        still holds exactly in the files.

    Returns
    -------
    dict
        ``mix``, ``s1`` ... (targets), ``noise`` (if any) as float32;
        ``images`` (list) and ``extra`` (kind -> list) on the same grid, as
        float64 (sum them before casting).

    Example
    -------
    >>> import numpy as np
    >>> out = {"mix": np.full(4, 0.3), "images": np.full((2, 4), 0.15),
    ...        "targets": np.full((2, 4), 0.1), "noise": None}
    >>> sigs = file_signals(out, "PCM_16")
    >>> sigs["mix"].shape, sigs["s2"].dtype, bool(sigs["mix"][0] == 2 * sigs["images"][0][0])
    ((4,), dtype('float32'), True)
    """
    check_subtype(subtype)

    def q(x):  # float32, then (PCM_16) the 16-bit grid
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        return np.round(x * 32768) / 32768 if subtype == "PCM_16" else x

    sigs = {f"s{k + 1}": q(t) for k, t in enumerate(out["targets"])}
    sigs["images"] = [q(x) for x in out["images"]]
    sigs["extra"] = {kind: [q(x) for x in xs] for kind, xs in out.get("extra", {}).items()}
    if out["noise"] is not None:
        sigs["noise"] = q(out["noise"])
    if subtype == "PCM_16":  # the sum of 16-bit values is exact in 16 bits
        sigs["mix"] = sum(sigs["images"]) + (sigs["noise"] if out["noise"] is not None else 0)
    else:
        sigs["mix"] = q(out["mix"])
    return {k: v if k in ("images", "extra") else v.astype(np.float32) for k, v in sigs.items()}


def export_mixtures(dataset, folder, n, subtype="FLOAT"):
    """Write ``n`` fixed mixtures of ``dataset`` (items 0..n-1 of epoch 0) and their CSV.

    Writes ``folder/{mix,s1,s2[,s3...][,noise]}/<id>.wav`` and
    ``folder/mixtures.csv`` with columns ``ID,duration,mix_wav,s1_wav,...
    [,noise_wav]`` (absolute paths), the recipes' manifest format. Build the
    dataset on held-out ``speakers`` for valid/test sets.

    Arguments
    ---------
    dataset : sb_mamba.dataio.mixing.DynamicMixingDataset
        The mixtures (its epoch is restored afterwards).
    folder : str or Path
        Output folder.
    n : int
        Number of mixtures (may exceed ``epoch_size``).
    subtype : str
        ``"FLOAT"`` (default) writes the items exactly. ``"PCM_16"`` rounds
        each source (and noise) to 16 bits and writes their sum as the mix,
        so mix == sum of the written files still holds exactly.

    Returns
    -------
    Path
        The CSV file.

    Example
    -------
    >>> import tempfile, torch
    >>> from sb_mamba.audio import read_audio
    >>> from sb_mamba.dataio.mixing import DynamicMixingDataset
    >>> root = tempfile.mkdtemp()
    >>> for spk in "ab": write_audio(f"{root}/{spk}/u.wav", torch.randn(12000) / 9, 8000)
    >>> ds = DynamicMixingDataset(root, epoch_size=4, segment_seconds=1.0)
    >>> csv_file = export_mixtures(ds, f"{root}/valid", 2)
    >>> read_audio(csv_file.parent / "mix" / f"{ds[0]['id']}.wav", 8000).shape
    torch.Size([8000])
    """
    check_subtype(subtype)
    folder = Path(folder).absolute()
    names = [f"s{k + 1}" for k in range(dataset.num_spks)] + ["noise"] * bool(dataset.noise_files)
    rows, saved_epoch = [], dataset.epoch
    dataset.set_epoch(0)
    try:
        for idx in tqdm(range(n), desc=f"Exporting mixtures to {folder}", unit="mix"):
            spec = dataset.draw(idx)
            sigs = file_signals(dataset.render(spec), subtype)
            row = {"ID": spec["id"], "duration": round(len(sigs["mix"]) / dataset.sample_rate, 5)}
            for k in ["mix", *names]:
                path = folder / k / f"{spec['id']}.wav"
                write_audio(path, sigs[k], dataset.sample_rate, subtype)
                row[f"{k}_wav"] = str(path)
            rows.append(row)
    finally:
        dataset.set_epoch(saved_epoch)
    csv_file = folder / "mixtures.csv"
    write_csv(csv_file, rows, ["ID", "duration", *[f"{k}_wav" for k in ["mix", *names]]])
    logger.info("Wrote %d mixtures and %s.", n, csv_file)
    return csv_file
