"""The main of every sb_mamba recipe: prepare, train, evaluate, report.

A recipe's ``train.py`` names its data preparation and calls
:func:`run_recipe`; everything else (DDP set-up, experiment folder, datasets,
dynamic mixing, the :class:`~sb_mamba.training.brain.Separation` brain, test
results) is shared here, so recipes stay a few dozen lines.

Recipe YAML keys read here: ``output_folder``, ``save_folder``,
``data_folder``, ``skip_prep``, ``prepare_kwargs`` (passed to the
preparation function), ``num_spks``, ``sample_rate``, ``dynamic_mixing``
and ``dm_dataset`` (a ``!name:`` of a dataset class, built only when
``dynamic_mixing`` is true; reverberant dynamic mixing with anechoic or
early targets refuses ``use_speedperturb`` and ``use_rand_shift``),
``modules``, ``optimizer``, ``checkpointer``, ``epoch_counter``,
``dataloader_opts``, optional ``test_only`` and ``init_from`` (warm start:
a model folder or ``separator.ckpt`` whose weights initialise the separator
when the run has no checkpoint yet; a checkpoint, once written, wins).

Authors
-------
 * sb_mamba developers
"""

import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from sb_mamba.dataio.datasets import csv_dataset
from sb_mamba.dataio.reverb_mixing import check_remix
from sb_mamba.training.brain import Separation

logger = get_logger(__name__)


def load_recipe_hparams(argv):
    """Parse ``train.py hparams.yaml --key=value ...`` like SpeechBrain.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (without the program name).

    Returns
    -------
    hparams_file, run_opts, overrides, hparams
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(f"Hyperparameter file {hparams_file} not found.")
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, overrides)
    except KeyError as e:
        if "Override" not in str(e):
            raise
        key = str(e).split("'")[1]
        raise ValueError(
            f"--{key} is not a key of {hparams_file}: a command-line --key=value "
            "must name a key that exists in the YAML; check its spelling."
        ) from None
    return hparams_file, run_opts, overrides, hparams


def main(prepare, argv=None):
    """Entry point of a recipe's ``train.py``: :func:`run_recipe` with clean errors.

    User errors (a missing or malformed dataset folder, unreadable audio, a
    wrong YAML key) end the run with one message and exit status 2 instead
    of a traceback; set ``SB_MAMBA_TRACEBACK=1`` to see the traceback.

    Arguments
    ---------
    prepare : callable or None
        The data preparation (see :func:`run_recipe`).
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    """
    try:
        run_recipe(prepare, argv)
    except (FileNotFoundError, ValueError) as e:  # AudioError is a ValueError
        if os.environ.get("SB_MAMBA_TRACEBACK") == "1":
            raise
        logger.error("%s: %s", type(e).__name__, e)
        sys.exit(2)


def run_recipe(prepare, argv=None):
    """Prepare the data, train, evaluate and write ``test_results.csv``.

    Arguments
    ---------
    prepare : callable or None
        ``prepare(data_folder=..., save_folder=..., sample_rate=...,
        num_spks=..., skip_prep=..., **prepare_kwargs)`` writing
        ``{train,valid,test}.csv`` in ``save_folder``.
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    Separation
        The trained brain (for tests and notebooks).
    """
    hparams_file, run_opts, overrides, hparams = load_recipe_hparams(
        sys.argv[1:] if argv is None else argv
    )
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    save_folder = hparams["save_folder"]
    if prepare is not None:
        run_on_main(
            prepare,
            kwargs=dict(
                data_folder=hparams["data_folder"],
                save_folder=save_folder,
                sample_rate=hparams["sample_rate"],
                num_spks=hparams["num_spks"],
                skip_prep=hparams["skip_prep"],
                **hparams.get("prepare_kwargs", {}),
            ),
        )

    def manifest(split):
        return csv_dataset(
            os.path.join(save_folder, f"{split}.csv"),
            hparams["num_spks"],
            hparams["sample_rate"],
        )

    if hparams.get("dynamic_mixing", False):
        train_set = hparams["dm_dataset"]()
        check_remix(train_set, hparams)
        logger.info("Dynamic mixing: %d mixtures per epoch.", len(train_set))
    else:
        train_set = manifest("train")
    valid_set, test_set = manifest("valid"), manifest("test")

    init_from = hparams.get("init_from")
    if init_from and hparams["checkpointer"].find_checkpoint() is None:
        warm_start(hparams["modules"]["separator"], init_from)
    elif init_from:
        logger.info("init_from=%s ignored: the run resumes from its checkpoint.", init_from)

    brain = Separation(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    loader_opts = hparams["dataloader_opts"]
    # SpeechBrain parses --test_only itself (a run option); the YAML key works too
    if not (hparams.get("test_only", False) or run_opts.get("test_only", False)):
        brain.fit(
            brain.hparams.epoch_counter,
            train_set,
            valid_set,
            train_loader_kwargs=loader_opts,
            valid_loader_kwargs=hparams.get("valid_dataloader_opts", {"batch_size": 1}),
        )
    brain.evaluate(test_set, max_key="si-snr", test_loader_kwargs={"batch_size": 1})
    brain.save_results(test_set)
    return brain


def warm_start(separator, source):
    """Initialise ``separator`` with the weights of a trained model (no code runs).

    Arguments
    ---------
    separator : torch.nn.Module
        The recipe's separator.
    source : str or Path
        A model folder holding ``separator.ckpt`` (e.g. an exported model,
        fp16 weights are cast to the model's dtype) or a checkpoint file.
        A folder's ``hyperparams.yaml`` (read as data, nothing is built)
        must describe the same class and layout (e.g. ``stride``): weights
        of the same shapes trained for another layout are refused.

    Example
    -------
    >>> import tempfile
    >>> net, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> path = Path(tempfile.mkdtemp()) / "separator.ckpt"
    >>> torch.save(other.state_dict(), path)
    >>> warm_start(net, path.parent)
    >>> torch.equal(net.weight, other.weight)
    True
    """
    path = Path(source)
    if path.is_dir():
        check_same_layout(separator, path / "hyperparams.yaml", source)
        path = path / "separator.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"init_from={source}: no such model folder or checkpoint file; give a "
            "folder with separator.ckpt (e.g. pretrained/sepmamba-librimini-8k) or null."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        separator.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"init_from={source} does not fit the recipe's separator (set the model "
            f"keys, e.g. model_dim / model_blocks, to the ones it was trained with): {e}"
        ) from None
    logger.info("Warm start: separator initialised from %s.", path)


def check_same_layout(separator, hparams_file, source):
    """Refuse ``init_from`` weights built for another class or layout.

    Compares the separator arguments of a model folder's ``hyperparams.yaml``
    with the attributes of the same names of the recipe's separator (e.g.
    SepMamba's ``kernel_size``, ``stride``, ``num_levels``, ``causal``).
    """
    if not Path(hparams_file).is_file():
        return
    from sb_mamba.inference.export import load_training_tree, separator_spec

    cls, kwargs = separator_spec(load_training_tree(hparams_file))
    ours = f"{type(separator).__module__}.{type(separator).__name__}"
    diff = [f"class {cls} (the recipe builds {ours})"] if cls != ours else []
    diff += [f"{k}={v!r} (the recipe builds {getattr(separator, k)!r})"
             for k, v in kwargs.items()
             if k != "ssm_backend" and hasattr(separator, k) and getattr(separator, k) != v]
    if diff:
        raise ValueError(
            f"init_from={source} was trained with " + ", ".join(diff) + ": set the "
            "recipe's model keys to match it, or start without init_from."
        )
