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

import csv
import dataclasses
import importlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError

logger = get_logger(__name__)

CONFIG = "config.json"
WEIGHTS = "separator.safetensors"
CARD = "README.md"
RESULTS = "test_results.csv"
TRAIN_HPARAMS = "hyperparams_train.yaml"
OLD_YAML = "hyperparams.yaml"  # the old layout (read by read_old_layout only)
OLD_WEIGHTS = "separator.ckpt"
FORMAT = "sb_mamba-model"
FORMAT_VERSION = 1
RATE_RANGE = (1000, 384000)  # Hz a model may run at
MAX_TEXT_BYTES = 4 << 20  # a config or YAML bigger than this is not a model description
PAPERS = {
    "SepMamba": "Avenstrup et al., SepMamba, ICASSP 2025, https://arxiv.org/abs/2410.20997",
    "SPMamba": "Li et al., SPMamba, ICME 2025, https://arxiv.org/abs/2404.02063",
    "S4M": "Chen et al., S4M, Interspeech 2023, https://arxiv.org/abs/2305.16932",
}
# constructor arguments that a separator used to take and ignored
RETIRED_ARGS = {"sb_mamba.lobes.spmamba.SPMamba": ("sample_rate",)}


# ------------------------------------------------------------ separators
def separator_class(path):
    """The separator class a dotted path names, checked as an object.

    The object must be a ``torch.nn.Module`` class of ``sb_mamba.lobes``
    that describes itself (:class:`~sb_mamba.lobes.base.ModelArgsMixin`),
    defined in the module the path names: ``sb_mamba.lobes.sepmamba.os.system``
    does not pass.

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
    from sb_mamba.lobes.base import ModelArgsMixin

    module, _, name = str(path).rpartition(".")
    obj = None
    if re.fullmatch(r"sb_mamba\.lobes\.\w+", module) and name.isidentifier():
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
    """Build the separator ``path`` names with ``kwargs`` (plain values).

    Arguments
    ---------
    path : str
        Dotted path of the class, checked by :func:`separator_class`.
    kwargs : dict
        Constructor arguments; arguments the class retired
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
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise UserError(f"Cannot build {path} from its stored arguments: "
                        f"{' '.join(str(e).split())}.") from None


def inside(path, folder):
    """Whether ``path``, links followed, lies in ``folder`` (links followed).

    Example
    -------
    >>> inside("/tmp/a/b.yaml", "/tmp/a"), inside("/tmp/a/../b.yaml", "/tmp/a")
    (True, False)
    """
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


# ---------------------------------------------------------------- config
@dataclasses.dataclass
class ModelConfig:
    """What ``config.json`` says: the separator and how to feed it.

    Arguments
    ---------
    separator_class : str
        Dotted path of an sb_mamba separator.
    separator_args : dict
        Its constructor arguments (plain JSON values).
    sample_rate : int
        Rate of the model's input and output, Hz.
    num_spks : int
        Number of output sources.
    origin : str
        Where the weights came from (informative only).

    Example
    -------
    >>> cfg = ModelConfig("sb_mamba.lobes.sepmamba.SepMamba", {"dim": 8}, 8000, 2)
    >>> ModelConfig.from_json(cfg.to_json(), "config.json") == cfg
    True
    """

    separator_class: str
    separator_args: dict
    sample_rate: int
    num_spks: int
    origin: str = ""

    def to_json(self):
        """The text of ``config.json``."""
        data = {"format": FORMAT, "format_version": FORMAT_VERSION,
                **dataclasses.asdict(self)}
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text, where):
        """Parse and check ``config.json`` text (``where`` names it in errors)."""
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise UserError(f"{where} is not valid JSON ({e}): re-export the model.") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{where} is not an sb_mamba model config (no \"format\": "
                            f"\"{FORMAT}\"): re-export the model.")
        if data.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{where} has format_version {data.get('format_version')!r}; "
                            f"this sb_mamba reads {FORMAT_VERSION}: upgrade sb_mamba.")
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - fields - {"format", "format_version"})
        missing = sorted(f for f in fields - set(data) if f != "origin")
        if extra or missing:
            raise UserError(f"{where}: " + "; ".join(
                [f"unknown keys {extra}"] * bool(extra) + [f"missing keys {missing}"] * bool(missing))
                + ": re-export the model.")
        config = cls(**{k: data[k] for k in fields if k in data})
        config.check(where)
        return config

    def check(self, where="the model config"):
        """Refuse values no model folder may hold (one :class:`UserError`)."""
        args, rate, spks = self.separator_args, self.sample_rate, self.num_spks
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise UserError(f"{where}: separator_args must be a mapping of names to values.")
        _plain_value(args, f"{where}: separator_args")
        if type(rate) is not int or not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise UserError(f"{where}: sample_rate {rate!r} is not a model rate (an integer "
                            f"from {RATE_RANGE[0]} to {RATE_RANGE[1]} Hz); give the rate the "
                            "model was trained at (e.g. --sample-rate 8000).")
        if type(spks) is not int or not 1 <= spks <= 64:
            raise UserError(f"{where}: num_spks {spks!r} is not a number of sources (1 to 64).")
        if "num_spks" in args and args["num_spks"] != spks:
            raise UserError(f"{where}: num_spks {spks} but the separator's num_spks is "
                            f"{args['num_spks']}: re-export the model.")
        if not isinstance(self.origin, str):
            raise UserError(f"{where}: origin must be a string.")
        separator_class(self.separator_class)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _plain_value(value, where, depth=0):
    """Check that ``value`` is built of JSON-plain values only."""
    if depth > 20:
        raise UserError(f"{where} is nested too deeply.")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where}: key {k!r} is not a string.")
            _plain_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for v in value:
            _plain_value(v, where, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} is {value}: not a finite number.")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise UserError(f"{where}: {type(value).__name__} is not a plain value.")


# --------------------------------------------------------------- reading
def _read_text(path, what="file"):
    """A small UTF-8 file, refused if it leaves nothing readable or is huge."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise UserError(f"{path} is {size} bytes: too big for a model {what}; refusing it.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: not a model {what}.") from None


def _member(folder, name):
    """``folder/name``, refused if it is a link leading out of the folder."""
    path = Path(folder) / name
    if (path.exists() or path.is_symlink()) and not inside(path, folder):
        raise UserError(f"{path} leads outside the model folder {folder} (a link): refusing "
                        "to read it; copy the real file into the folder.")
    return path


def layout(folder):
    """``"new"`` (config.json), ``"old"`` (hyperparams.yaml) or None.

    Example
    -------
    >>> import tempfile
    >>> layout(tempfile.mkdtemp()) is None
    True
    """
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        return "new"
    if (folder / OLD_YAML).is_file() and (folder / OLD_WEIGHTS).is_file():
        return "old"
    return None


def read_config(folder):
    """The checked :class:`ModelConfig` of a folder in the current layout."""
    path = _member(folder, CONFIG)
    if not path.is_file():
        raise FileNotFoundError(2, "Not a model folder (no config.json; see sb-mamba export)",
                                str(folder))
    return ModelConfig.from_json(_read_text(path, "config"), str(path))


def read_safetensors(path):
    """A ``.safetensors`` file as a dict of CPU tensors (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        why = " ".join(str(e).split())[:200]
        raise UserError(f"{path} is not a readable safetensors file ({why}): re-download "
                        "or re-export the model.") from None


def read_pickled_weights(path, safe_globals=(), trust=False):
    """A torch-pickled weights file, read with ``torch.load(weights_only=True)``.

    Only tensors, plain containers and the classes of ``safe_globals`` are
    built; a file that pickles anything else (which could run code) is
    refused with one :class:`UserError` naming the class.

    Arguments
    ---------
    path : str or Path
        The file (an old-layout ``separator.ckpt``, a checkpoint of a run,
        an official checkpoint).
    safe_globals : sequence
        Plain data classes to allow besides tensors.
    trust : bool
        Unpickle anything (``weights_only=False``, runs what the file holds):
        only ``sb-mamba convert --trust-checkpoint`` on the user's request.

    Returns
    -------
    object
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such weights file", str(path))
    if trust:
        logger.warning("%s is unpickled with weights_only=False, which runs any code the "
                       "file holds (you asked to trust it).", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise UserError(
                f"{path} holds a {found[0]} object, which is not one of the plain data "
                "types a file of weights needs, so it was not loaded (unpickling it could "
                "run code); --trust-checkpoint (sb-mamba convert) reads it anyway if you "
                "trust where it comes from.") from None
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"Cannot read {path}: not a PyTorch weights file ({first}).") from None
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise UserError(f"Cannot read {path}: not a PyTorch weights file "
                        f"({' '.join(str(e).split())[:200]}).") from None


def read_weights(path):
    """A state_dict file: ``.safetensors``, else torch-pickled (weights only).

    Returns
    -------
    dict
        Parameter name -> tensor.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "separator.ckpt"
    >>> torch.save({"w": torch.ones(2, 3)}, path)
    >>> read_weights(path)["w"].shape
    torch.Size([2, 3])
    """
    path = Path(path)
    state = (read_safetensors(path) if path.suffix == ".safetensors"
             else read_pickled_weights(path))
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path} is not a flat state_dict (names -> tensors): give a "
                        "model folder or a separator.ckpt of a run.")
    return state


def read_folder(folder, migrate_hint=True):
    """The config and weights of a model folder, in either layout, as data.

    Arguments
    ---------
    folder : str or Path
        A model folder.
    migrate_hint : bool
        Log, for an old-layout folder, the command that rewrites it.

    Returns
    -------
    config : ModelConfig
    state : dict
        Parameter name -> tensor (as stored, e.g. fp16).

    Example
    -------
    >>> from sb_mamba.resources import pretrained_path
    >>> config, state = read_folder(pretrained_path("sepmamba-librimini-8k"))
    >>> config.sample_rate, config.num_spks, state["decoder.weight"].dtype
    (8000, 2, torch.float16)
    """
    folder = Path(folder)
    kind = layout(folder)
    if kind is None:
        raise FileNotFoundError(2, "Not a model folder (no config.json or old-layout "
                                "hyperparams.yaml + separator.ckpt; see sb-mamba export)",
                                str(folder))
    if kind == "old":
        config, state = read_old_layout(folder)
        if migrate_hint:
            logger.warning("%s is in the old layout (hyperparams.yaml + separator.ckpt), read "
                           "as data; rewrite it once with `sb-mamba migrate %s`.", folder, folder)
        return config, state
    config = read_config(folder)
    path = _member(folder, WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(2, "The model folder has no weights file", str(path))
    return config, read_weights(path)


def load_separator(config, state, where, overrides=None):
    """Build the separator of ``config`` and load ``state`` into it (strict).

    Arguments
    ---------
    config : ModelConfig
    state : dict
    where : str
        Names the source in errors.
    overrides : dict, optional
        Constructor arguments replacing the stored ones (e.g.
        ``{"ssm_backend": "cuda"}``).

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> cfg = ModelConfig("sb_mamba.lobes.sepmamba.SepMamba",
    ...                   {"dim": 8, "num_blocks": 1, "d_state": 4}, 8000, 2)
    >>> net = build_separator(cfg.separator_class, cfg.separator_args)
    >>> load_separator(cfg, net.state_dict(), "here").decoder.weight.shape
    torch.Size([8, 2, 16])
    """
    net = build_separator(config.separator_class,
                          {**config.separator_args, **(overrides or {})})
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"The weights of {where} do not fit its separator "
                        f"({config.separator_class}): {' '.join(str(e).split())[:400]}") from None
    return net


# ------------------------------------------------------ old layout (data)
_YAML = "tag:yaml.org,2002:"
_SCALARS = {_YAML + t for t in ("str", "int", "float", "bool", "null")}
_PRETRAINER = "speechbrain.utils.parameter_transfer.Pretrainer"


def _compose(path, what):
    """The YAML file as a node tree: parsed, nothing constructed, no tag run."""
    try:
        return yaml.compose(_read_text(path, what), Loader=yaml.SafeLoader)
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a {what}.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())[:300]}") from None


def _construct(node):
    """A plain node (default tags only, checked before) as a Python value."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def read_old_layout(folder, weights=True):
    """Read an old-layout folder (``hyperparams.yaml`` + ``separator.ckpt``) as data.

    The YAML must have the shape the old exporter wrote, and nothing else:
    ``sample_rate`` and ``num_spks`` (integers), ``separator: !new:<an
    sb_mamba separator>`` with plain arguments, ``modules: {separator: !ref
    <separator>}`` and optionally ``pretrainer: !new:speechbrain.utils.
    parameter_transfer.Pretrainer`` with ``loadables: {separator: !ref
    <separator>}``. It is composed into nodes, so no tag is ever constructed;
    anything else (another key or tag, a tagged key, an include, an anchor)
    is refused with one line. The weights are read with
    ``torch.load(weights_only=True)``.

    Arguments
    ---------
    folder : str or Path
        The folder.
    weights : bool
        Also read ``separator.ckpt`` (else ``state`` is None).

    Returns
    -------
    config : ModelConfig
    state : dict or None
    """
    folder = Path(folder)
    path = _member(folder, OLD_YAML)
    seen = set()

    def refuse(node, what):
        line = node.start_mark.line + 1 if node is not None else 1
        raise UserError(
            f"{path}, line {line}: {what}; an old-layout model folder may only hold the "
            "separator description sb-mamba export wrote (sample_rate, num_spks, separator: "
            "!new:<sb_mamba separator> with plain arguments, modules, pretrainer), so it is "
            "refused unread: rewrite the folder from its training run with `sb-mamba export "
            f"RUN_FOLDER {folder}`.")

    def plain(node, depth=0):
        if id(node) in seen:
            refuse(node, "an alias (*anchor) where plain values go")
        seen.add(id(node))
        if depth > 20:
            refuse(node, "values nested too deeply")
        if isinstance(node, yaml.ScalarNode) and node.tag in _SCALARS:
            return
        if isinstance(node, yaml.SequenceNode) and node.tag == _YAML + "seq":
            for v in node.value:
                plain(v, depth + 1)
            return
        if isinstance(node, yaml.MappingNode) and node.tag == _YAML + "map":
            for k, v in node.value:
                key(k)
                plain(v, depth + 1)
            return
        refuse(node, f"'{node.tag}' is not a plain value")

    def key(node):
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "str"):
            refuse(node, f"a key tagged '{node.tag}'")
        return node.value

    def mapping(node, keys, where):
        if not isinstance(node, yaml.MappingNode):
            refuse(node, f"{where} is not a mapping")
        items = {}
        for k, v in node.value:
            name = key(k)
            if name not in keys or name in items:
                refuse(k, f"unexpected key '{name}' in {where}")
            items[name] = v
        return items

    def ref_to_separator(node, where):
        if not (isinstance(node, yaml.ScalarNode) and node.tag == "!ref"
                and node.value.strip() == "<separator>"):
            refuse(node, f"{where} must be '!ref <separator>', not '{node.tag}'")

    root = _compose(path, "description")
    if root is None:
        refuse(None, "an empty file")
    top = mapping(root, {"sample_rate", "num_spks", "separator", "modules", "pretrainer"},
                  "the file")
    for name in ("sample_rate", "num_spks", "separator", "modules"):
        if name not in top:
            refuse(root, f"no '{name}'")
    for name in ("sample_rate", "num_spks"):
        if not (isinstance(top[name], yaml.ScalarNode) and top[name].tag == _YAML + "int"):
            refuse(top[name], f"{name} is not an integer")
    sep = top["separator"]
    if not (sep.tag or "").startswith("!new:"):
        refuse(sep, f"separator is '{sep.tag}', not a !new: of an sb_mamba separator")
    cls = sep.tag[len("!new:"):]
    try:
        separator_class(cls)
    except UserError:
        refuse(sep, f"'{sep.tag}' is not a separator of sb_mamba")
    args = {}
    if isinstance(sep, yaml.MappingNode):
        for k, v in sep.value:
            plain(v)
            args[key(k)] = _construct(v)
    elif not (isinstance(sep, yaml.ScalarNode) and sep.value == ""):
        refuse(sep, "the separator's arguments are not a mapping")
    ref_to_separator(mapping(top["modules"], {"separator"}, "modules").get(
        "separator", top["modules"]), "modules.separator")
    if "pretrainer" in top:
        node = top["pretrainer"]
        if node.tag != "!new:" + _PRETRAINER:
            refuse(node, f"pretrainer is '{node.tag}', not SpeechBrain's Pretrainer")
        loadables = mapping(node, {"loadables"}, "pretrainer").get("loadables", node)
        ref_to_separator(mapping(loadables, {"separator"}, "pretrainer.loadables").get(
            "separator", loadables), "pretrainer.loadables.separator")
    comment = re.search(r"^# from (.{1,300})$", _read_text(path, "description"), re.M)
    origin = (comment.group(1).strip() + ", " if comment else "") + \
        f"migrated from the old layout ({OLD_YAML} + {OLD_WEIGHTS})"
    config = ModelConfig(cls, args, _construct(top["sample_rate"]), _construct(top["num_spks"]),
                         origin=origin)
    config.check(str(path))
    return config, read_weights(_member(folder, OLD_WEIGHTS)) if weights else None


# --------------------------------------------------- training YAMLs (data)
class _New:
    """A ``!new:`` object of a training YAML, described, never built."""

    def __init__(self, cls, args):
        self.cls, self.args = cls, args


class _Opaque:
    """A value of a training YAML that cannot be read as data (never built)."""

    def __init__(self, tag, where):
        self.tag, self.where = tag, where


class _RunYaml:
    """One training YAML read as data: keys resolve lazily, no tag ever runs."""

    def __init__(self, path, overrides=None, budget=None, depth=0):
        if depth > 8:
            raise UserError(f"{path}: !include: nested more than 8 deep.")
        self.path, self.depth = Path(path), depth
        if not self.path.is_file():
            raise FileNotFoundError(2, "Training hyperparameters not found", str(path))
        root = _compose(self.path, "YAML")
        if not isinstance(root, yaml.MappingNode):
            raise UserError(f"{path} is not a YAML mapping of hyperparameters.")
        self.nodes = {k.value: v for k, v in root.value
                      if isinstance(k, yaml.ScalarNode) and k.tag == _YAML + "str"}
        self.overrides = dict(overrides or {})
        self.budget = budget if budget is not None else [200000]
        self.resolving = set()

    def __contains__(self, key):
        return key in self.overrides or key in self.nodes

    def __getitem__(self, key):
        if key in self.overrides:
            return self.overrides[key]
        if key in self.resolving:
            raise UserError(f"{self.path}: '{key}' refers to itself.")
        self.resolving.add(key)
        try:
            return self.value(self.nodes[key])
        finally:
            self.resolving.discard(key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def value(self, node, depth=0):
        self.budget[0] -= 1
        where = f"{self.path}, line {node.start_mark.line + 1}"
        if self.budget[0] < 0 or depth > 40:
            raise UserError(f"{where}: too many values to read as data.")
        tag = node.tag or ""
        if tag in ("!ref", "!copy") and isinstance(node, yaml.ScalarNode):
            match = re.fullmatch(r"\s*<([\w.-]+)((?:\[[^\[\]<>]+\])*)>\s*", node.value)
            if not match:  # an expression or a string: only plain references are read
                return _Opaque(f"{tag} {node.value}", where)
            value = self[match.group(1)] if match.group(1) in self else _Opaque(tag, where)
            for index in re.findall(r"\[([^\]]+)\]", match.group(2)):
                value = value.get(index.strip(), _Opaque(tag, where)) if isinstance(
                    value, (dict, _RunYaml)) else _Opaque(tag, where)
            return value
        if tag.startswith("!new:"):
            if isinstance(node, yaml.MappingNode):
                return _New(tag[5:], {k.value: self.value(v, depth + 1) for k, v in node.value
                                      if isinstance(k, yaml.ScalarNode)})
            if isinstance(node, yaml.ScalarNode) and node.value == "":
                return _New(tag[5:], {})
            return _Opaque(tag + " (positional arguments)", where)
        if tag.startswith("!include:"):
            target = Path(tag[len("!include:"):].strip())
            target = target if target.is_absolute() else self.path.parent / target
            target = target if target.exists() else _shipped_fragment(target)
            overrides = ({k.value: self.value(v, depth + 1) for k, v in node.value
                          if isinstance(k, yaml.ScalarNode)}
                         if isinstance(node, yaml.MappingNode) else {})
            return _RunYaml(target, overrides, self.budget, self.depth + 1)
        if isinstance(node, yaml.MappingNode) and tag == _YAML + "map":
            return {k.value: self.value(v, depth + 1) for k, v in node.value
                    if isinstance(k, yaml.ScalarNode)}
        if isinstance(node, yaml.SequenceNode) and tag == _YAML + "seq":
            return [self.value(v, depth + 1) for v in node.value]
        if isinstance(node, yaml.ScalarNode) and tag in _SCALARS:
            return _construct(node)
        return _Opaque(tag, where)


def _shipped_fragment(target):
    """A missing ``.../hparams/models/x.yaml`` include: the installed copy, if any."""
    parts = Path(target).as_posix().rsplit("hparams/", 1)
    if len(parts) == 2:
        try:
            from sb_mamba.resources import hparams_path

            return Path(hparams_path(parts[1]))
        except FileNotFoundError:
            pass
    return Path(target)


def _to_plain(value, where):
    """A resolved training-YAML value as plain Python, or one UserError."""
    if isinstance(value, _Opaque):
        raise UserError(
            f"{value.where}: '{value.tag}' cannot be read as data (another run's YAML is "
            f"read without running it): give {where} as a plain value or a !ref of one.")
    if isinstance(value, (_New, _RunYaml)):
        raise UserError(f"{where} is an object, not a plain value; nested objects are not "
                        "supported as separator arguments.")
    if isinstance(value, dict):
        return {str(k): _to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v, where) for v in value]
    return value


def read_run_hparams(hparams_file):
    """The separator of a training run's YAML, read as data (nothing runs).

    Reads ``modules: separator:`` (a ``!new:`` of an sb_mamba separator,
    possibly reached through ``!ref`` and ``!include:``), ``sample_rate`` and
    ``num_spks``. Tags other than ``!ref``/``!copy`` of plain keys,
    ``!include:`` and ``!new:`` are never built (``!apply:``,
    ``!applyref:``, ...): where a needed value holds one, it is refused.

    Arguments
    ---------
    hparams_file : str or Path
        A run's ``hyperparams.yaml`` (SpeechBrain's resolved copy) or a recipe YAML.

    Returns
    -------
    ModelConfig
        ``separator_args`` as given (``ssm_backend`` set to ``"auto"``).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "hyperparams.yaml"
    >>> _ = path.write_text("num_spks: 2\\nrun: !applyref:os.getcwd []\\nmodules:\\n"
    ...     "  separator: !new:sb_mamba.lobes.sepmamba.SepMamba\\n    dim: 8\\n"
    ...     "    num_spks: !ref <num_spks>\\n")
    >>> cfg = read_run_hparams(path)
    >>> cfg.separator_args, cfg.sample_rate
    ({'dim': 8, 'num_spks': 2}, 8000)
    """
    run = _RunYaml(hparams_file)
    modules = run.get("modules")
    sep = modules.get("separator") if isinstance(modules, (dict, _RunYaml)) else None
    if sep is None:
        raise UserError(f"{hparams_file} has no `modules: separator:` entry.")
    if not isinstance(sep, _New):
        what = sep.tag if isinstance(sep, _Opaque) else type(sep).__name__
        raise UserError(f"{hparams_file}: modules.separator must be a !new: object, got "
                        f"'{what}'.")
    separator_class(sep.cls)
    args = {k: _to_plain(v, f"separator.{k}") for k, v in sep.args.items()}
    if args.get("ssm_backend", "auto") != "auto":
        logger.info("ssm_backend %s -> auto in the model folder.", args["ssm_backend"])
        args["ssm_backend"] = "auto"
    rate = _to_plain(run.get("sample_rate", args.get("sample_rate", 8000)), "sample_rate")
    spks = _to_plain(run.get("num_spks", args.get("num_spks", 2)), "num_spks")
    return ModelConfig(sep.cls, args, rate, spks)


# ------------------------------------------------- results and model card
def read_test_results(path):
    """The ``avg`` row of a ``test_results.csv`` as floats.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "test_results.csv"
    >>> _ = path.write_text("snt_id,si-snr_i\\na,1\\navg,2.5\\n")
    >>> read_test_results(path)
    {'si-snr_i': 2.5}
    """
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("snt_id") == "avg":
                return {k: float(v) for k, v in row.items() if k != "snt_id"}
    raise UserError(f"{path} has no 'avg' row: give the test_results.csv a recipe wrote.")


def model_card(name, cls, params, sample_rate, num_spks, results, ckpt_note,
               fp16, license, notes="", train_yaml=True, license_text=None):
    """Markdown model card with HuggingFace front matter (``notes``: extra markdown).

    ``results``: the ``avg`` row (dict), a markdown line, or None.
    ``train_yaml``: mention ``hyperparams_train.yaml`` (an exported training
    run has one). ``license_text``: the body of the License section (default:
    sb_mamba's code licence, the weights' ``license`` and the data note).

    Example
    -------
    >>> card = model_card("m", "sb_mamba.lobes.sepmamba.SepMamba", 1e6, 8000, 2,
    ...                   None, "CKPT", False, "apache-2.0")
    >>> card.splitlines()[7]
    '# m: SepMamba speech separation (2 speakers, 8 kHz)'
    """
    short = cls.rsplit(".", 1)[-1]
    rows = ["Results not given (pass test_results=...)."]
    if isinstance(results, str):
        rows = [results]
    elif results:
        rows = [
            "Test set (`avg` row of `test_results.csv`), in dB:", "",
            "| SI-SNR | SI-SNRi | SDR | SDRi |", "|---|---|---|---|",
            "| " + " | ".join(f"{results.get(k, float('nan')):.2f}"
                             for k in ("si-snr", "si-snr_i", "sdr", "sdr_i")) + " |",
        ]
    return "\n".join([
        "---", f"license: {license}", "library_name: speechbrain",
        "pipeline_tag: audio-to-audio",
        "tags: [audio-source-separation, speech-separation, mamba, sb_mamba]",
        "---", "", f"# {name}: {short} speech separation "
        f"({num_spks} speakers, {sample_rate / 1000:g} kHz)", "", *rows, "",
        f"- Model: `{cls}`, {params / 1e6:.2f} M parameters.",
        f"- Sample rate: {sample_rate} Hz (inputs are downmixed and resampled).",
        f"- Checkpoint: {ckpt_note}"
        + (" (stored in fp16, loaded as fp32)." if fp16 else "."),
        f"- Paper: {PAPERS.get(short, 'see the sb_mamba documentation')}.",
        f"- Files: `{CONFIG}` (class, arguments, rate) and `{WEIGHTS}`: data only, "
        "loading runs no code from this folder.",
        "", "## Usage", "", "```bash", "pip install .  # in a clone of sb_mamba (it is not on PyPI yet)", "```", "",
        "```python", "from sb_mamba.inference import MambaSeparator", "",
        f'model = MambaSeparator.from_hparams(source="<this repo or folder>", '
        f'savedir="pretrained_models/{name}")',
        'est = model.separate_file("mixture.wav", output_dir="separated")  '
        f"# [1, T, {num_spks}]",
        "# long recordings: chunked overlap-add with speaker alignment",
        'est = model.separate_file("long.wav", chunk_seconds=8, overlap=0.5)', "```",
        "", "Command line: `sb-mamba separate <model> recordings/ -o separated "
        "--chunk-seconds 8`.", "",
        *([f"`{TRAIN_HPARAMS}` holds the training hyperparameters.", ""]
          if train_yaml else []),
        *([notes.strip(), ""] if notes and notes.strip() else []),
        "## License", "",
        license_text or f"Code: Apache-2.0 (sb_mamba). Weights: {license}. The weights "
        "derive from the training data; check its license too (e.g. LibriSpeech is "
        "CC BY 4.0, WSJ0 needs an LDC license).", "",
    ])


# --------------------------------------------------------------- writing
def _is_old_model_yaml(folder):
    try:
        read_old_layout(folder, weights=False)
    except (UserError, OSError):
        return False
    return True


def write_folder(target, config, state, card=None, files=None, fp16=False, sources=()):
    """Write a model folder atomically, checked to load before it is in place.

    The files are written into a temporary folder beside ``target``; the
    separator is built from ``config`` and must take ``state`` (strict);
    then each file is moved into ``target`` (created if needed; other files
    in it are kept, the model's own are replaced, and an old-layout
    ``hyperparams.yaml`` + ``separator.ckpt`` is removed). Any error leaves
    ``target`` as it was.

    Arguments
    ---------
    target : str or Path
        The model folder. Refused if it is a link, a file, one of
        ``sources`` or a folder holding one, or a folder whose
        ``hyperparams.yaml`` is not an old model description (a run folder).
    config : ModelConfig
        Checked (:meth:`ModelConfig.check`).
    state : dict
        Parameter name -> tensor.
    card : str, optional
        ``README.md`` (model card, :func:`model_card`).
    files : dict, optional
        Extra files: name (``hyperparams_train.yaml``, ``test_results.csv``)
        -> source path to copy (as bytes; never read or run here).
    fp16 : bool
        Store floating-point weights as float16 (loaded back as fp32).
    sources : iterable of str or Path
        Folders and files the export reads: ``target`` must not be or hold one.

    Returns
    -------
    Path
        ``target``.

    Example
    -------
    >>> import tempfile
    >>> cfg = ModelConfig("sb_mamba.lobes.sepmamba.SepMamba",
    ...                   {"dim": 8, "num_blocks": 1, "d_state": 4}, 8000, 2)
    >>> net = build_separator(cfg.separator_class, cfg.separator_args)
    >>> folder = write_folder(Path(tempfile.mkdtemp()) / "m", cfg, net.state_dict())
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'separator.safetensors']
    """
    from safetensors.torch import save_file

    target = Path(target)
    config.check("the model config")
    files = dict(files or {})
    for name in files:
        if name in (CONFIG, WEIGHTS, CARD) or "/" in name or name.startswith("."):
            raise ValueError(f"{name} is not an extra file name of a model folder.")
    _check_target(target, sources)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu()
             .contiguous().clone() for k, v in state.items()}
    load_separator(config, state, str(target))  # the folder must load
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sbm-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # a plain folder once in place, not mkdtemp's 0700
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if card is not None:
            (tmp / CARD).write_text(card, encoding="utf-8")
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        (tmp / CONFIG).write_text(config.to_json(), encoding="utf-8")
        ModelConfig.from_json((tmp / CONFIG).read_text(encoding="utf-8"), CONFIG)
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~umask)
        old = layout(target) == "old" if target.is_dir() else False
        if not target.exists():
            os.replace(tmp, target)
        else:
            for name in [WEIGHTS, CARD, *files, CONFIG]:  # config.json last
                if (tmp / name).exists():
                    os.replace(tmp / name, target / name)
        if old:  # superseded by config.json + separator.safetensors
            for name in (OLD_YAML, OLD_WEIGHTS):
                (target / name).unlink(missing_ok=True)
            logger.info("Removed the old-layout %s and %s of %s.", OLD_YAML, OLD_WEIGHTS,
                        target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_target(target, sources):
    """Refuse a target folder that writing a model there would damage."""
    if target.is_symlink():
        raise UserError(f"{target} is a link: model folders are never written through "
                        "links; give the real folder.")
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; pick another target.")
    for src in sources:
        if src is not None and Path(src).exists() and inside(src, target):
            raise UserError(f"The target {target} is (or holds) {src}, which this command "
                            "reads: writing there would overwrite the run; choose another "
                            "target folder.")
    if (target / OLD_YAML).exists() and not _is_old_model_yaml(target):
        raise UserError(f"{target} holds a {OLD_YAML} that is not a model description (a "
                        "training run folder?): choose another target folder.")


def migrate(folder, target=None):
    """Rewrite an old-layout folder in the current layout (``sb-mamba migrate``).

    The old files are read as data (:func:`read_old_layout`); the new ones
    are written by :func:`write_folder` (into ``folder`` itself by default,
    removing the old ``hyperparams.yaml`` and ``separator.ckpt``). The
    weights keep their dtype, so the model's outputs do not change.

    Arguments
    ---------
    folder : str or Path
        An old-layout model folder.
    target : str or Path, optional
        Write the new folder there instead (other files are copied along).

    Returns
    -------
    Path
        The folder in the current layout.

    Example
    -------
    >>> from sb_mamba.resources import pretrained_path
    >>> migrate(pretrained_path("sepmamba-librimini-8k")).name  # already in the current layout
    'sepmamba-librimini-8k'
    """
    folder = Path(folder)
    kind = layout(folder)
    if kind == "new" and target is None:
        logger.info("%s is already in the current layout (%s); nothing to do.", folder, CONFIG)
        return folder
    if kind != "old":
        raise FileNotFoundError(2, "Not an old-layout model folder (no hyperparams.yaml + "
                                "separator.ckpt)", str(folder))
    config, state = read_old_layout(folder)
    keep = {}
    if target is not None:  # bring the card and records along
        keep = {p.name: p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
                and p.name not in (OLD_YAML, OLD_WEIGHTS, CONFIG, WEIGHTS, CARD)
                and not p.name.startswith(".")}
    card = (folder / CARD).read_text(encoding="utf-8") if (folder / CARD).is_file() else None
    out = write_folder(target or folder, config, state, card=card, files=keep)
    logger.info("Migrated %s to %s (%s + %s).", folder, out, CONFIG, WEIGHTS)
    return out


def add_arguments(p):
    """The arguments of ``sb-mamba migrate``."""
    p.add_argument("folder", help="old-layout model folder (hyperparams.yaml + separator.ckpt)")
    p.add_argument("target", nargs="?", help="write the new folder there (default: in place)")


def run(args):
    """``sb-mamba migrate FOLDER [TARGET]``."""
    migrate(args.folder, args.target)
    return 0
