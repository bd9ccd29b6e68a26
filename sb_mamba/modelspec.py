"""Model and training YAMLs read as data: nothing is built, no code runs.

:func:`load_training_tree` parses a YAML with references resolved but no
object constructed; :func:`separator_spec` reads the class and constructor
arguments of its ``modules: separator:`` entry. Export, warm starts and
model loading use them to know what a folder holds before building it.

Authors
-------
 * sb_mamba developers
"""

import ruamel.yaml
from hyperpyyaml import resolve_references
from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError

logger = get_logger(__name__)

# constructor arguments that a separator used to take and ignored
RETIRED_ARGS = {"sb_mamba.lobes.spmamba.SPMamba": ("sample_rate",)}


def separator_class(path):
    """The separator class a dotted path names, checked as an object.

    The path is resolved (module imported, attribute looked up) and the
    object itself must be a separator of sb_mamba's: a ``torch.nn.Module``
    class that describes itself (:class:`~sb_mamba.lobes.base.ModelArgsMixin`).
    A string check alone would let ``sb_mamba.some.module.os.system`` pass.

    Arguments
    ---------
    path : str
        e.g. ``"sb_mamba.lobes.sepmamba.SepMamba"``.

    Returns
    -------
    type

    Example
    -------
    >>> separator_class("sb_mamba.lobes.sepmamba.SepMamba").__name__
    'SepMamba'
    >>> separator_class("sb_mamba.lobes.sepmamba.torch.nn.Linear")
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: sb_mamba.lobes.sepmamba.torch.nn.Linear is not a separator of sb_mamba (a sb_mamba.lobes class); refusing to build it.
    """
    import importlib

    import torch

    from sb_mamba.lobes.base import ModelArgsMixin

    module, _, name = str(path).rpartition(".")
    obj = None
    if module.startswith("sb_mamba.lobes.") and name:
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            obj = None
    ok = (isinstance(obj, type) and issubclass(obj, torch.nn.Module)
          and issubclass(obj, ModelArgsMixin) and obj.__module__ == module)
    if not ok:
        raise UserError(f"{path} is not a separator of sb_mamba (a sb_mamba.lobes "
                        "class); refusing to build it.")
    return obj


def build_separator(path, kwargs):
    """Build the separator ``path`` names with ``kwargs`` (no YAML involved).

    Arguments
    ---------
    path : str
        Dotted path of the class, checked by :func:`separator_class`.
    kwargs : dict
        Constructor arguments (plain values); arguments the class retired
        (:data:`RETIRED_ARGS`) are dropped with a message.

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> net = build_separator("sb_mamba.lobes.sepmamba.SepMamba",
    ...                       {"dim": 8, "num_blocks": 1, "ssm_backend": "torch"})
    >>> net.get_model_args()["dim"]
    8
    """
    cls = separator_class(path)
    kwargs = dict(kwargs)
    for name in RETIRED_ARGS.get(path, ()):
        if kwargs.pop(name, None) is not None:
            logger.info("%s no longer takes %s; ignored.", path, name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"Cannot build {path} from its stored arguments: {e}.") from None


def _tag(node):
    tag = getattr(node, "tag", None)
    return getattr(tag, "value", None) or ""


def _plain(node, where):
    """A ruamel node as plain Python; tagged (built) values are refused."""
    if _tag(node):
        raise UserError(
            f"{where} is '{_tag(node)}': the exporter writes constructor "
            "arguments as plain values; nested objects are not supported."
        )
    if isinstance(node, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v, where) for v in node]
    if type(node).__name__ == "ScalarBoolean":  # ruamel's anchored booleans
        return bool(node)
    for t in (bool, int, float, str):
        if isinstance(node, t):
            return t(node)
    if node is None:
        return None
    raise UserError(f"{where}: unsupported value {node!r}.")


def load_training_tree(hparams_file):
    """The training YAML as a ruamel tree, references resolved, nothing built.

    Top-level ``!PLACEHOLDER`` keys (a raw recipe YAML) are filled with a
    dummy string first.
    """
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as f:
        raw = yaml.load(f)
    holders = {k: "unset" for k, v in raw.items() if _tag(v) == "!PLACEHOLDER"}
    with open(hparams_file, encoding="utf-8") as f:
        return yaml.load(resolve_references(f, holders))


def separator_spec(tree):
    """Class path and constructor arguments of ``modules: separator:``.

    Returns
    -------
    cls : str
        e.g. ``"sb_mamba.lobes.sepmamba.SepMamba"``.
    kwargs : dict
        Plain values.
    """
    node = (tree.get("modules") or {}).get("separator")
    if node is None:
        raise UserError("The training YAML has no `modules: separator:` entry.")
    tag = _tag(node)
    if not tag.startswith("!new:"):
        raise UserError(f"modules.separator must be a !new: object, got '{tag}'.")
    cls = tag[len("!new:"):]
    separator_class(cls)
    if not isinstance(node, dict):
        raise UserError("modules.separator must take keyword arguments.")
    kwargs = {str(k): _plain(v, f"separator.{k}") for k, v in node.items()}
    if kwargs.get("ssm_backend", "auto") != "auto":
        logger.info("ssm_backend %s -> auto in the inference YAML.",
                    kwargs["ssm_backend"])
        kwargs["ssm_backend"] = "auto"
    return cls, kwargs
