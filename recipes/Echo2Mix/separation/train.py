#!/usr/bin/env python3
"""Echo2Mix recipe (16 kHz, reverberant targets): train and evaluate a separator.

    python train.py hparams/spmamba.yaml --data_folder=/path/to/Echo2Mix
    torchrun --nproc_per_node=4 train.py hparams/spmamba.yaml --data_folder=...

The data preparation writes the CSV manifests train.csv, valid.csv and test.csv
(of the train, val and test folders); everything else (the Separation brain,
test_results.csv) is sb_mamba.training.recipe.

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.dataio.manifests import prepare_echo2mix as prepare
from sb_mamba.training.recipe import main

if __name__ == "__main__":
    main(prepare)
