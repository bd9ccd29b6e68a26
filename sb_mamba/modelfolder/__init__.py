"""The model folder: one owner for its files, read and written as data.

A model folder (what ``sb-mamba export`` and ``sb-mamba convert`` write,
what :class:`~sb_mamba.inference.MambaSeparator` and ``init_from`` read)
holds no code::

    config.json             format, separator class, its arguments, sample_rate, num_spks
    separator.safetensors   the weights (safetensors: no pickle)
    README.md               model card
    hyperparams_train.yaml  training hyperparameters (export; kept as a record, never run)
    test_results.csv        per-mixture test figures (export, if the run wrote them)

``config.json`` is read with :func:`json.loads` and checked key by key; the
class must be one of sb_mamba's separators (:func:`separator_class`), built
with the stored arguments (:func:`build_separator`). Nothing in a folder is
ever given to HyperPyYAML. Folders of the old layout (``hyperparams.yaml``
plus a pickled ``separator.ckpt``, as exported before) are read by
:func:`read_old_layout`: the YAML is composed into nodes (no tag is ever
constructed) and must have exactly the shape the old exporter wrote; the
weights are read with ``torch.load(weights_only=True)``. ``sb-mamba migrate
FOLDER`` rewrites such a folder once (:func:`migrate`).

Another run's training YAML (export, ``init_from``) is read by
:func:`read_run_hparams`: also composed into nodes, with ``!ref``,
``!copy`` and ``!include:`` followed as data and every other tag left
unbuilt.

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.modelfolder._card import model_card, read_test_results
from sb_mamba.modelfolder._config import (
    AVERAGE_KEY,
    CARD,
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    MAX_TEXT_BYTES,
    OLD_WEIGHTS,
    OLD_YAML,
    PAPERS,
    RATE_RANGE,
    RESULTS,
    RUN_OPTIONS,
    TRAIN_HPARAMS,
    WEIGHTS,
    ModelConfig,
    build_separator,
    hub_source,
    separator_class,
    without_run_options,
)
from sb_mamba.modelfolder._legacy import read_old_layout, read_run_hparams
from sb_mamba.modelfolder._read import (
    layout,
    load_separator,
    read_checkpoint_weights,
    read_config,
    read_folder,
    read_pickled_weights,
    read_safetensors,
    read_weights,
)
from sb_mamba.modelfolder._write import add_arguments, migrate, run, write_folder

__all__ = [
    "AVERAGE_KEY",
    "CARD",
    "CONFIG",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_TEXT_BYTES",
    "ModelConfig",
    "OLD_WEIGHTS",
    "OLD_YAML",
    "PAPERS",
    "RATE_RANGE",
    "RESULTS",
    "RUN_OPTIONS",
    "TRAIN_HPARAMS",
    "WEIGHTS",
    "build_separator",
    "hub_source",
    "separator_class",
    "without_run_options",
    "layout",
    "load_separator",
    "read_checkpoint_weights",
    "read_config",
    "read_folder",
    "read_pickled_weights",
    "read_safetensors",
    "read_weights",
    "read_old_layout",
    "read_run_hparams",
    "model_card",
    "read_test_results",
    "add_arguments",
    "migrate",
    "run",
    "write_folder",
]
