#!/usr/bin/env python3
"""General recipe: train and evaluate a separator for real recordings.

    python train.py hparams/sepmamba.yaml --data_folder=/path/to/shared/data

Training mixes LibriMini's train readers and the speechocean762 speakers of
``<data_folder>/speech-l2`` on the fly, in rooms and noise; validation and
test use fixed mixtures of held-out speakers, noise and rooms
(``sb_mamba.dataio.general``; the split is ``../meta/splits.json``).

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

from sb_mamba.dataio.general import prepare_general
from sb_mamba.training.recipe import main

HERE = Path(__file__).resolve().parent
DEFAULTS = {
    "librimini_folder": str(HERE.parents[1] / "LibriMini" / "data"),  # bundled speech
    "splits": str(HERE.parent / "meta" / "splits.json"),  # the fixed split
}

if __name__ == "__main__":
    main(prepare_general, defaults=DEFAULTS)
