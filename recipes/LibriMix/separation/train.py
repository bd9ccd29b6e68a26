#!/usr/bin/env python3
"""LibriMix recipe (Libri2Mix / Libri3Mix): train and evaluate a separator.

    python train.py hparams/spmamba.yaml --data_folder=/path/to/LibriMix
    python train.py hparams/spmamba.yaml --data_folder=/path/to/LibriMix --use_wham_noise=True
    torchrun --nproc_per_node=4 train.py hparams/spmamba.yaml --data_folder=...

The data preparation writes the CSV manifests train.csv, valid.csv and test.csv
(of the train-100/train-360, dev and test sets); everything else
(dynamic mixing, the Separation brain, test_results.csv) is sb_mamba.training.recipe.

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.dataio.manifests import prepare_librimix as prepare
from sb_mamba.training.recipe import main

if __name__ == "__main__":
    main(prepare)
