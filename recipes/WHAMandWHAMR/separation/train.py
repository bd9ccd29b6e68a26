#!/usr/bin/env python3
"""WHAM! / WHAMR! recipe: train and evaluate a separator.

    python train.py hparams/spmamba-wham.yaml --data_folder=/path/to/wham
    python train.py hparams/spmamba-whamr.yaml --data_folder=/path/to/whamr
    torchrun --nproc_per_node=4 train.py hparams/spmamba-wham.yaml --data_folder=...

``prepare_kwargs.dataset`` in the YAML (``wham`` or ``whamr``) picks the data
preparation; the other ``prepare_kwargs`` go to it. Everything else (dynamic
mixing, the Separation brain, test_results.csv) is sb_mamba.training.recipe.

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.dataio.manifests import prepare_wham, prepare_whamr
from sb_mamba.errors import UserError
from sb_mamba.training.recipe import main

PREPARERS = {"wham": prepare_wham, "whamr": prepare_whamr}


def prepare(dataset="wham", **kwargs):
    """Run ``prepare_wham`` or ``prepare_whamr`` (``dataset``) with ``kwargs``."""
    if dataset not in PREPARERS:
        raise UserError(
            f"prepare_kwargs.dataset must be one of {list(PREPARERS)}, not "
            f"{dataset!r}: pass e.g. --prepare_kwargs={{dataset: whamr}}."
        )
    return PREPARERS[dataset](**kwargs)


if __name__ == "__main__":
    main(prepare)
