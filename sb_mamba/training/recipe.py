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

import io
import os
import re
import sys
from datetime import date
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from sb_mamba.dataio.manifests import csv_dataset
from sb_mamba.dataio.mixing import check_remix
from sb_mamba.errors import USER_ERROR, UserError, user_message
from sb_mamba.resources import hparams_path
from sb_mamba.training.brain import Separation

logger = get_logger(__name__)


_INCLUDE = re.compile(r"!include:(\S+)")


def _fragment_includes(text, folder):
    """``!include:`` paths that do not exist next to the YAML but name a
    shipped fragment (``.../hparams/models/x.yaml``) point to the installed
    copy (:func:`sb_mamba.hparams_path`), so a recipe copied out of the clone
    still finds its model; paths that exist are left alone."""
    def fix(match):
        target = match.group(1)
        if (Path(folder) / target).exists() or "hparams/" not in target:
            return match.group(0)
        return "!include:" + hparams_path(target.rsplit("hparams/", 1)[1])

    return _INCLUDE.sub(fix, text)


def _yaml_stream(hparams_file):
    """The YAML's text, shipped-fragment includes fixed, as a named stream."""
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(2, "Hyperparameter file not found", str(hparams_file))
    text = Path(hparams_file).read_text(encoding="utf-8")
    stream = io.StringIO(_fragment_includes(text, Path(hparams_file).parent))
    stream.name = str(hparams_file)  # relative !include: paths start from its folder
    return stream


def merge_overrides(overrides=None, defaults=None):
    """``--key=value`` overrides (a YAML string or dict) plus ``defaults``
    for the keys they do not set, as a dict.

    Example
    -------
    >>> merge_overrides("lr: 0.1", {"lr": 1, "data_folder": "data"})
    {'lr': 0.1, 'data_folder': 'data'}
    """
    if isinstance(overrides, str):
        overrides = ruamel.yaml.YAML().load(overrides)
    merged = dict(overrides or {})
    for key, value in (defaults or {}).items():
        merged.setdefault(key, value)
    return merged


def load_hparams(hparams_file, overrides=None, defaults=None):
    """Load a recipe YAML with overrides; user mistakes become :class:`UserError`.

    Arguments
    ---------
    hparams_file : str or Path
        The recipe YAML.
    overrides : str or dict, optional
        ``--key=value`` overrides (SpeechBrain's YAML string) or a dict.
    defaults : dict, optional
        Values for keys the overrides do not set (a recipe's ``train.py``
        gives e.g. its bundled ``data_folder``).

    Returns
    -------
    dict
        The loaded hyperparameters.
    """
    merged = merge_overrides(overrides, defaults)
    try:
        return load_hyperpyyaml(_yaml_stream(hparams_file), merged or None)
    except KeyError as e:
        if "Override" not in str(e):
            raise
        key = str(e).split("'")[1]
        raise UserError(
            f"--{key} is not a key of {hparams_file}: a command-line --key=value "
            "must name a key that exists in the YAML; check its spelling."
        ) from None
    except ValueError as e:
        if "!PLACEHOLDER" not in str(e):
            raise
        key = str(e).split("'")[1]
        raise UserError(
            f"{hparams_file} needs --{key}: pass it on the command line, e.g. "
            f"--{key}=/path/to/the/dataset (see the recipe's README for its layout)."
        ) from None


def save_hparams(hparams_file, overrides, folder):
    """Write ``folder/hyperparams.yaml``: the YAML with overrides and includes
    resolved (what SpeechBrain's ``create_experiment_directory`` writes)."""
    text = resolve_references(_yaml_stream(hparams_file), overrides or None).getvalue()
    Path(folder, "hyperparams.yaml").write_text(
        f"# Generated {date.today()} from:\n# {os.path.abspath(hparams_file)}\n"
        f"# yamllint disable\n{text}", encoding="utf-8")


def main(prepare, argv=None, defaults=None):
    """Entry point of a recipe's ``train.py``: :func:`run_recipe` with clean errors.

    A user error (a missing or malformed dataset folder, unreadable audio, a
    wrong or missing YAML key: :class:`~sb_mamba.errors.UserError` or
    ``FileNotFoundError``) ends the run with one message and exit status 2
    instead of a traceback; set ``SB_MAMBA_TRACEBACK=1`` to see the
    traceback. Anything else is a bug and keeps its traceback.

    Arguments
    ---------
    prepare : callable or None
        The data preparation (see :func:`run_recipe`).
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    defaults : dict, optional
        Values of YAML keys that the command line does not set.
    """
    try:
        run_recipe(prepare, argv, defaults)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("SB_MAMBA_TRACEBACK") == "1":
            raise
        logger.error("%s: %s", type(e).__name__, user_message(e))
        sys.exit(USER_ERROR)


def run_recipe(prepare, argv=None, defaults=None):
    """Prepare the data, train, evaluate and write ``test_results.csv``.

    Arguments
    ---------
    prepare : callable or None
        ``prepare(data_folder=..., save_folder=..., sample_rate=...,
        num_spks=..., skip_prep=..., **prepare_kwargs)`` writing
        ``{train,valid,test}.csv`` in ``save_folder``.
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    defaults : dict, optional
        Values of YAML keys that the command line does not set.

    Returns
    -------
    Separation
        The trained brain (for tests and notebooks).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(
        sys.argv[1:] if argv is None else argv
    )
    overrides = merge_overrides(overrides, defaults)
    hparams = load_hparams(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"])
    if if_main_process():
        save_hparams(hparams_file, overrides, hparams["output_folder"])
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
        check_remix(train_set, speed_perturb=hparams.get("use_speedperturb", False),
                    rand_shift=hparams.get("use_rand_shift", False))
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
        raise UserError(
            f"init_from={source} does not fit the recipe's separator (set the model "
            f"keys, e.g. model_dim / model_blocks, to the ones it was trained with): {e}"
        ) from None
    logger.info("Warm start: separator initialised from %s.", path)


def check_same_layout(separator, hparams_file, source):
    """Refuse ``init_from`` weights built for another class or layout.

    Compares the separator arguments of a model folder's ``hyperparams.yaml``
    (read as data) with the recipe's separator's own
    (:meth:`~sb_mamba.lobes.base.ModelArgsMixin.get_model_args`; e.g.
    SepMamba's ``kernel_size``, ``stride``, ``num_levels``, ``causal``).
    """
    if not Path(hparams_file).is_file():
        return
    from sb_mamba.modelspec import load_training_tree, separator_spec

    cls, kwargs = separator_spec(load_training_tree(hparams_file))
    ours = f"{type(separator).__module__}.{type(separator).__name__}"
    args = separator.get_model_args() if hasattr(separator, "get_model_args") else {}
    diff = [f"class {cls} (the recipe builds {ours})"] if cls != ours else []
    diff += [f"{k}={v!r} (the recipe builds {args[k]!r})"
             for k, v in kwargs.items()
             if k != "ssm_backend" and k in args and args[k] != v]
    if diff:
        raise UserError(
            f"init_from={source} was trained with " + ", ".join(diff) + ": set the "
            "recipe's model keys to match it, or start without init_from."
        )
