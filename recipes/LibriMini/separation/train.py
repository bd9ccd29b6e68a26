#!/usr/bin/env python3
"""LibriMini recipe: train and evaluate a separator on the bundled speech.

    python train.py hparams/sepmamba.yaml [--output_folder=... --N_epochs=...]
    torchrun --nproc_per_node=2 train.py hparams/sepmamba.yaml --distributed_backend=gloo

Training mixes the bundled train speakers on the fly; validation and test use
fixed mixtures of held-out speakers written by the data preparation.

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

from sb_mamba.dataio.librimini import prepare_librimini
from sb_mamba.training.recipe import main

# The speech bundled with this recipe (recipes/LibriMini/data)
BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data"

if __name__ == "__main__":
    main(prepare_librimini, defaults={"data_folder": str(BUNDLED_DATA)})
