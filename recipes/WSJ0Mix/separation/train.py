#!/usr/bin/env python3
"""WSJ0-2mix / WSJ0-3mix recipe: train and evaluate a separator.

    python train.py hparams/sepmamba.yaml --data_folder=/path/to/wsj0-mix/2speakers \
        --base_folder_dm=/path/to/wsj0/si_tr_s
    python train.py hparams/spmamba.yaml --data_folder=/path/to/wsj0-mix/2speakers
    torchrun --nproc_per_node=4 train.py hparams/spmamba.yaml --data_folder=...

The data preparation writes the CSV manifests train.csv, valid.csv and test.csv
(of the tr, cv and tt folders); everything else
(dynamic mixing, the Separation brain, test_results.csv) is sb_mamba.training.recipe.

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.dataio.manifests import prepare_wsj0mix as prepare
from sb_mamba.training.recipe import main

if __name__ == "__main__":
    main(prepare)
