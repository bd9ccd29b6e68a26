"""The main of every sb_mamba recipe: prepare, train, evaluate, report.

A recipe's ``train.py`` names its data preparation and calls :func:`main`
(:func:`run_recipe` under the error policy); everything else (DDP set-up, experiment folder, datasets,
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
Every top-level key of a recipe YAML must be referenced in it or read by the
recipe or the Brain (``HPARAMS_READ``): a misspelt optional key is an error.

Authors
-------
 * sb_mamba developers
"""

import difflib
import io
import os
import re
import sys
from datetime import date
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from sb_mamba import modelfolder
from sb_mamba.dataio.manifests import csv_dataset
from sb_mamba.dataio.mixing import check_remix
from sb_mamba.errors import UserError, run_with_policy
from sb_mamba.resources import hparams_path
from sb_mamba.training.brain import HPARAMS_READ as BRAIN_HPARAMS_READ
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


# The recipe-YAML keys run_recipe reads (see the module docstring); with the
# Brain's (brain.HPARAMS_READ) and SpeechBrain's run options, the keys a YAML
# may hold without referencing them (tests/recipes/test_yaml_consistency.py).
HPARAMS_READ = frozenset(
    {
        "checkpointer",
        "data_folder",
        "dataloader_opts",
        "dm_dataset",
        "dynamic_mixing",
        "epoch_counter",
        "init_from",
        "modules",
        "num_spks",
        "optimizer",
        "output_folder",
        "prepare_kwargs",
        "sample_rate",
        "save_folder",
        "skip_prep",
        "test_only",
        "use_rand_shift",
        "use_speedperturb",
        "valid_dataloader_opts",
        "ssm_backend",  # old YAMLs: a run option now (--ssm_backend), read with a warning
    }
)
_REF_KEY = re.compile(r"<([^<>\[\].\s]+)")  # the key of <key>, <key[...]>, <key.attr>


def yaml_keys(text):
    """The top-level keys of a recipe YAML and the keys its ``!ref``/``!copy`` use.

    Arguments
    ---------
    text : str
        The YAML (HyperPyYAML) text; tags are not run, only read.

    Returns
    -------
    keys : list of str
        Top-level keys, in order.
    referenced : set of str
        Keys named in a ``!ref`` or ``!copy`` (``<key>``, ``<key[sub]>``).

    Example
    -------
    >>> keys, referenced = yaml_keys("a: 1\\nb: !ref <a> * 2\\nc:\\n  d: !copy <e[f]>\\ne: 3")
    >>> keys, sorted(referenced)
    (['a', 'b', 'c', 'e'], ['a', 'e'])
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # HyperPyYAML's own parser reports it
        return [], set()
    if not isinstance(root, yaml.MappingNode):
        return [], set()
    referenced, stack = set(), [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif node.tag in ("!ref", "!copy"):
            referenced.update(_REF_KEY.findall(node.value))
    keys = [k.value for k, _ in root.value if isinstance(k, yaml.ScalarNode)]
    return keys, referenced


def check_keys(hparams_file, text, read_keys=()):
    """Refuse top-level keys of a recipe YAML that nothing reads (misspelt keys).

    A key is read if the YAML references it (``!ref <key>``), if the recipe
    or the Brain reads it (``HPARAMS_READ`` here and in
    :mod:`sb_mamba.training.brain`), if it is one of SpeechBrain's run
    options (e.g. ``precision``), if ``read_keys`` names it, or if it starts
    with ``__`` (keys kept for their side effect, e.g. ``__set_seed``).

    Raises
    ------
    UserError
        Naming each such key, the closest known key and the fix.

    Example
    -------
    >>> check_keys("r.yaml", "seed: 1\\nuse_speed_perturb: True\\n__x: !ref <seed>")
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: r.yaml: key use_speed_perturb is read by nothing ...
    """
    keys, referenced = yaml_keys(text)
    known = (
        referenced
        | HPARAMS_READ
        | BRAIN_HPARAMS_READ
        | set(read_keys)
        | set(sb.core.RunOptions().as_dict())
    )
    unknown = [k for k in keys if not k.startswith("__") and k not in known]
    if not unknown:
        return
    candidates = sorted(known | {k for k in keys if k not in unknown})
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        hints.append(
            f"key {key} is read by nothing (no !ref <{key}> in the YAML, not a "
            "key the recipe, the Brain or SpeechBrain reads), so its value would be "
            "ignored: "
            + (f"did you mean {close[0]}? Fix its spelling" if close else "check its spelling")
            + " or delete it"
        )
    raise UserError(f"{hparams_file}: " + "; ".join(hints) + ".")


def check_include_keys(hparams_file, text):
    """Refuse keys given to an ``!include:`` that the included file lacks.

    HyperPyYAML drops an override naming no key of the included file, so a
    misspelt model argument (``model: !include:sepmamba_s.yaml`` with
    ``dimm: 8``) would be ignored. Tags are not run: both files are only
    composed into nodes.

    Raises
    ------
    UserError
        Naming the key, the included file, the closest key and the fix.

    Example
    -------
    >>> from sb_mamba import hparams_path
    >>> check_include_keys("r.yaml", f"model: !include:{hparams_path('models/sepmamba_s.yaml')}"
    ...                    "\\n    dimm: 8\\n")
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: r.yaml, line 2: dimm is not a key of sepmamba_s.yaml (included as model), so it would be ignored: did you mean dim? Fix its spelling or delete it.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # HyperPyYAML's own parser reports it
        return
    if not isinstance(root, yaml.MappingNode):
        return
    for key, node in root.value:
        tag = node.tag or ""
        if not (tag.startswith("!include:") and isinstance(node, yaml.MappingNode)):
            continue
        target = Path(tag[len("!include:") :].strip())
        target = target if target.is_absolute() else Path(hparams_file).parent / target
        try:
            included = yaml.compose(target.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # HyperPyYAML reports a missing or broken include
        if not isinstance(included, yaml.MappingNode):
            continue
        known = [k.value for k, _ in included.value if isinstance(k, yaml.ScalarNode)]
        for k, _ in node.value:
            if k.value in modelfolder.RUN_OPTIONS:
                continue  # an old YAML's run option: HyperPyYAML drops it, run_recipe reads it
            if isinstance(k, yaml.ScalarNode) and k.value not in known:
                close = difflib.get_close_matches(k.value, known, n=1, cutoff=0.6)
                raise UserError(
                    f"{hparams_file}, line {k.start_mark.line + 1}: {k.value} is not a key of "
                    f"{target.name} (included as {key.value}), so it would be ignored: "
                    + (
                        f"did you mean {close[0]}? Fix its spelling"
                        if close
                        else "check its spelling"
                    )
                    + " or delete it."
                )


def check_prepare_kwargs(prepare, kwargs, hparams_file):
    """Refuse ``prepare_kwargs`` keys that the data preparation does not take.

    Example
    -------
    >>> def prepare(data_folder, n_valid=10): ...
    >>> check_prepare_kwargs(prepare, {"n_vaild": 2}, "r.yaml")
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: r.yaml: prepare_kwargs: n_vaild is not an argument of prepare: did you mean n_valid? Fix its spelling or delete it.
    """
    import inspect

    if not isinstance(kwargs, dict):
        raise UserError(f"{hparams_file}: prepare_kwargs must be a mapping, e.g. {{n_valid: 2}}.")
    try:
        params = inspect.signature(prepare).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(str(key), list(params), n=1, cutoff=0.6)
            raise UserError(
                f"{hparams_file}: prepare_kwargs: {key} is not an argument of "
                f"{getattr(prepare, '__name__', 'the preparation')}: "
                + (
                    f"did you mean {close[0]}? Fix its spelling"
                    if close
                    else f"it takes {', '.join(params)}; check its spelling"
                )
                + " or delete it."
            )


def check_duplicate_args(argv):
    """Refuse a ``--key`` given twice on the command line (one would be lost).

    Example
    -------
    >>> check_duplicate_args(["h.yaml", "--lr=1", "--N_epochs", "2", "--lr=2"])
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: --lr is given twice on the command line (--lr=1 and --lr=2): give each key once.
    """
    seen = {}
    for arg in argv:
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg[2:].split("=", 1)[0]
        if name in seen:
            raise UserError(
                f"--{name} is given twice on the command line ({seen[name]} and "
                f"{arg}): give each key once."
            )
        seen[name] = arg


def pop_run_options(argv):
    """Split sb_mamba's own run options off the command line.

    SpeechBrain parses its run options (``--device``, ``--precision``, ...)
    and takes every other ``--key`` for a YAML override; sb_mamba's run
    option ``--ssm_backend`` (the selective scan's path: ``auto``, ``torch``,
    ``cpu_kernel`` or ``cuda``) is set on the model, never in the YAML.

    Arguments
    ---------
    argv : list of str
        The command line (``--ssm_backend=X`` or ``--ssm_backend X``).

    Returns
    -------
    argv : list of str
        The rest, for ``speechbrain.parse_arguments``.
    run_opts : dict
        ``{"ssm_backend": X}`` where given.

    Example
    -------
    >>> pop_run_options(["h.yaml", "--ssm_backend", "torch", "--lr=1"])
    (['h.yaml', '--lr=1'], {'ssm_backend': 'torch'})
    """
    rest, opts, it = [], {}, iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name[2:] in modelfolder.RUN_OPTIONS and name.startswith("--"):
            if not eq:
                value = next(it, None)
                if value is None:
                    raise UserError(f"{name} needs a value, e.g. {name}=auto.")
            opts[name[2:]] = value
        else:
            rest.append(arg)
    return rest, opts


def set_run_backend(hparams, run_opts):
    """Set the run's ``ssm_backend`` on every module, once (before any data work).

    The run option wins; an old YAML's ``ssm_backend`` key is used with a
    deprecation warning; else ``auto``. A wrong name is a :class:`UserError`.

    Returns
    -------
    str or None
        The backend set, None for a model without Mamba (e.g. S4M).
    """
    from sb_mamba.nnet.mamba import set_ssm_backend

    backend = run_opts.get("ssm_backend")
    if backend is None and "ssm_backend" in hparams:
        backend = hparams["ssm_backend"]
        logger.warning(
            "The YAML key ssm_backend is deprecated: it is a run option now "
            "(--ssm_backend=%s on the command line); remove it from the YAML.",
            backend,
        )
    backend = backend or "auto"
    try:
        mixers = sum(
            set_ssm_backend(m, backend)
            for m in hparams["modules"].values()
            if hasattr(m, "modules")
        )
    except ValueError as e:  # set_ssm_backend names the backends
        raise UserError(f"--ssm_backend: {e}") from None
    return backend if mixers else None


def record_run_backend(hparams, backend, device):
    """Resolve the run's backend on its device (logged once) and note it in ``env.log``."""
    from sb_mamba.nnet.scan import resolve_backend

    used = resolve_backend(backend, device)
    out = hparams.get("output_folder")
    if out and if_main_process():
        with open(os.path.join(out, "env.log"), "a") as f:
            f.write(f"sb_mamba ssm_backend: {backend} -> {used} ({device})\n")


def load_hparams(hparams_file, overrides=None, defaults=None, read_keys=()):
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
    read_keys : iterable of str, optional
        Top-level keys that the caller's own code reads (besides the
        recipe's and the Brain's, see :func:`check_keys`).

    Returns
    -------
    dict
        The loaded hyperparameters.

    Raises
    ------
    UserError
        A ``--key`` that the YAML lacks, a missing ``!PLACEHOLDER`` value,
        or a top-level key of the YAML that nothing reads (a misspelt
        optional key, :func:`check_keys`).
    """
    merged = merge_overrides(overrides, defaults)
    stream = _yaml_stream(hparams_file)
    check_keys(hparams_file, stream.getvalue(), read_keys)
    check_include_keys(hparams_file, stream.getvalue())
    try:
        return load_hyperpyyaml(stream, merged or None)
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
        f"# yamllint disable\n{text}",
        encoding="utf-8",
    )


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

    def run():
        try:
            run_recipe(prepare, argv, defaults)
        finally:
            # DDP: a process group left to the interpreter's exit can abort
            # there ("terminate called without an active exception", gloo's
            # threads) after a run that succeeded
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        return 0

    status = run_with_policy(
        run, lambda e, message: logger.error("%s: %s", type(e).__name__, message)
    )
    if status:
        sys.exit(status)


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
    argv = sys.argv[1:] if argv is None else argv
    check_duplicate_args(argv)
    argv, own_opts = pop_run_options(argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    overrides = merge_overrides(overrides, defaults)
    hparams = load_hparams(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"])
    if if_main_process():
        save_hparams(hparams_file, overrides, hparams["output_folder"])
    backend = set_run_backend(hparams, own_opts)  # a wrong name fails before any data work
    save_folder = hparams["save_folder"]
    if prepare is not None:
        check_prepare_kwargs(prepare, hparams.get("prepare_kwargs", {}), hparams_file)
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
        check_remix(
            train_set,
            speed_perturb=hparams.get("use_speedperturb", False),
            rand_shift=hparams.get("use_rand_shift", False),
        )
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
    if backend is not None:
        record_run_backend(hparams, backend, brain.device)
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
    # one pass over the test set: the test stats, test_results.csv and the audio examples
    brain.evaluate(test_set, max_key="si-snr", test_loader_kwargs={"batch_size": 1})
    return brain


def warm_start(separator, source):
    """Initialise ``separator`` with the weights of a trained model (no code runs).

    Arguments
    ---------
    separator : torch.nn.Module
        The recipe's separator.
    source : str or Path
        A model folder (e.g. an exported model; fp16 weights are cast to the
        model's dtype), read as data by :func:`sb_mamba.modelfolder.read_folder`
        (an old-layout folder too), whose config must describe the same class
        and layout (e.g. ``stride``): weights of the same shapes trained for
        another layout are refused, except that a SepMamba with more Mamba
        blocks per layer than the folder's grows from it (the new blocks start
        as identities: ``SepMamba.load_shallower_state_dict``). Or a weights
        file (a run's
        ``separator.ckpt``, read with ``torch.load(weights_only=True)``, or a
        ``.safetensors`` file).

    Example
    -------
    >>> import tempfile, torch
    >>> net, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> path = Path(tempfile.mkdtemp()) / "separator.ckpt"
    >>> torch.save(other.state_dict(), path)
    >>> warm_start(net, path)
    >>> torch.equal(net.weight, other.weight)
    True
    """
    path = Path(source)
    if path.is_dir() and modelfolder.layout(path) is not None:
        config, state = modelfolder.read_folder(path)
        if _deeper(separator, config):
            grown = separator.load_shallower_state_dict(state)
            logger.info(
                "Warm start: separator initialised from %s, grown from num_blocks=%s to %s: "
                "%d new Mamba blocks start as identities.",
                path,
                config.separator_args["num_blocks"],
                separator.get_model_args()["num_blocks"],
                len(grown),
            )
            return
        check_same_layout(separator, config, source)
    elif path.is_file():
        state = modelfolder.read_weights(path)
    else:
        raise FileNotFoundError(
            f"init_from={source}: no such model folder or checkpoint file; give a model "
            "folder (e.g. pretrained/sepmamba-librimini-8k), a separator.ckpt or null."
        )
    try:
        separator.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(
            f"init_from={source} does not fit the recipe's separator (set the model "
            f"keys, e.g. model_dim / model_stride / model_output, to the ones it was trained with): {e}"
        ) from None
    logger.info("Warm start: separator initialised from %s.", path)


def _deeper(separator, config):
    """Whether ``separator`` is the model of ``config`` with more Mamba blocks per
    layer, and can load its weights (``load_shallower_state_dict``)."""
    if not hasattr(separator, "load_shallower_state_dict"):
        return False
    ours = f"{type(separator).__module__}.{type(separator).__name__}"
    args, theirs = separator.get_model_args(), config.separator_args
    diff = {k for k, v in theirs.items() if k in args and args[k] != v}
    return (
        config.separator_class == ours
        and diff == {"num_blocks"}
        and args["num_blocks"] > theirs["num_blocks"]
    )


def check_same_layout(separator, config, source):
    """Refuse ``init_from`` weights built for another class or layout.

    Compares the separator arguments of a model folder's config (a
    :class:`~sb_mamba.modelfolder.ModelConfig`, read as data) with the
    recipe's separator's own
    (:meth:`~sb_mamba.lobes.base.ModelArgsMixin.get_model_args`; e.g.
    SepMamba's ``kernel_size``, ``stride``, ``num_levels``, ``causal``).
    """
    cls, kwargs = config.separator_class, config.separator_args
    ours = f"{type(separator).__module__}.{type(separator).__name__}"
    args = separator.get_model_args() if hasattr(separator, "get_model_args") else {}
    diff = [f"class {cls} (the recipe builds {ours})"] if cls != ours else []
    diff += [
        f"{k}={v!r} (the recipe builds {args[k]!r})"
        for k, v in kwargs.items()
        if k in args and args[k] != v
    ]
    if diff:
        raise UserError(
            f"init_from={source} was trained with " + ", ".join(diff) + ": set the "
            "recipe's model keys to match it, or start without init_from."
        )
