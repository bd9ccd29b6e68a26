"""Model and training YAMLs read as data: nothing is built, no code runs.

:func:`load_training_tree` parses a YAML with references resolved but no
object constructed; :func:`separator_spec` reads the class and constructor
arguments of its ``modules: separator:`` entry. Export, warm starts and
model loading use them to know what a folder holds before building it.

Authors
-------
 * sb_mamba developers
"""

import os
from pathlib import Path

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


# ------------------------------------------------- model folders from others
def _allowed_objects():
    """Objects an inference YAML may build besides the separators."""
    from speechbrain.utils.parameter_transfer import Pretrainer

    return (Pretrainer,)


def _resolve(path):
    """The object a dotted path names, importing only modules that may hold
    an allowed object (an untrusted path never gets an arbitrary import)."""
    import importlib

    module, _, name = str(path).rpartition(".")
    if not module.startswith(("sb_mamba.lobes.", "speechbrain.utils.parameter_transfer")):
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def inside(path, folder):
    """Whether ``path``, links followed, lies in ``folder`` (links followed).

    Example
    -------
    >>> inside("/tmp/a/b.yaml", "/tmp/a"), inside("/tmp/a/../b.yaml", "/tmp/a")
    (True, False)
    """
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def check_model_yaml(path, folder=None):
    """Refuse a model's YAML that would run code or read outside its folder.

    The file is parsed as data first (nothing is built). Allowed: untagged
    values, ``!ref``, ``!copy``, ``!tuple``, ``!PLACEHOLDER``, ``!new:`` or
    ``!name:`` of one of sb_mamba's separators (the dotted path is resolved
    and the object checked, :func:`separator_class`) or of SpeechBrain's
    ``Pretrainer``, and ``!include:`` of another file of the folder (checked
    the same way). Anything else (``!apply:``, ``!name:os.system``, a path
    or link that leaves the folder) raises one :class:`UserError` naming the
    file, the line and the fix.

    Arguments
    ---------
    path : str or Path
        The YAML file.
    folder : str or Path, optional
        The model folder (default: the file's folder).

    Example
    -------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "hyperparams.yaml").write_text("x: !apply:os.getcwd []\\n")
    >>> check_model_yaml(d / "hyperparams.yaml")
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: ...hyperparams.yaml, line 1: '!apply:os.getcwd' may run code; a model folder may only use !new:/!name: of sb_mamba's separators or SpeechBrain's Pretrainer, !ref, !copy and !include: of its own files. Load it with trust_remote_code=True (--trust-model) only if you trust its author.
    """
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    if not path.is_file():
        raise FileNotFoundError(2, "No such model file", str(path))
    if not inside(path, folder):
        raise UserError(f"{path} leads outside the model folder {folder} (through a link "
                        "or a parent-folder step): refusing to read it; copy the real file "
                        "into the folder.")
    yaml = ruamel.yaml.YAML()
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.load(f)
    except ruamel.yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None

    def refuse(line, what):
        raise UserError(
            f"{path}, line {line}: {what}; a model folder may only use !new:/!name: of "
            "sb_mamba's separators or SpeechBrain's Pretrainer, !ref, !copy and "
            "!include: of its own files. Load it with trust_remote_code=True "
            "(--trust-model) only if you trust its author.")

    def check(node, line):
        tag = _tag(node)
        if tag.startswith(("!new:", "!name:")):
            target = tag.split(":", 1)[1]
            obj = _resolve(target)
            if obj is None or not (obj in _allowed_objects() or _is_separator(target)):
                refuse(line, f"'{tag}' may run code")
        elif tag.startswith("!include:"):
            target = folder / tag.split(":", 1)[1].strip()
            if not inside(target, folder):
                refuse(line, f"'{tag}' reads a file outside the model folder")
            check_model_yaml(target, folder)
        elif tag and tag not in ("!ref", "!copy", "!tuple", "!PLACEHOLDER"):
            refuse(line, f"'{tag}' may run code")
        if isinstance(node, dict):
            for i, (k, v) in enumerate(node.items()):
                check(v, _line(node, k, i, line))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                check(v, _line(node, None, i, line))

    check(tree, 1)


def _is_separator(target):
    try:
        separator_class(target)
    except UserError:
        return False
    return True


def _line(node, key, index, default):
    """1-based line of an item of a ruamel map (by key) or list (by index)."""
    try:
        lc = node.lc.key(key) if key is not None else node.lc.item(index)
        return lc[0] + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return default
