"""Old-layout folders and training YAMLs, read as data (no tag is built).

Part of :mod:`sb_mamba.modelfolder` (see there).

Authors
-------
 * sb_mamba developers
"""

import re
from pathlib import Path

import yaml
from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError
from sb_mamba.modelfolder._config import (
    OLD_WEIGHTS,
    OLD_YAML,
    ModelConfig,
    build_separator,
    separator_class,
    without_run_options,
)
from sb_mamba.modelfolder._read import _member, _read_text, read_weights

logger = get_logger(__name__)


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
            f"RUN_FOLDER {folder}`."
        )

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
        if not (
            isinstance(node, yaml.ScalarNode)
            and node.tag == "!ref"
            and node.value.strip() == "<separator>"
        ):
            refuse(node, f"{where} must be '!ref <separator>', not '{node.tag}'")

    root = _compose(path, "description")
    if root is None:
        refuse(None, "an empty file")
    top = mapping(
        root, {"sample_rate", "num_spks", "separator", "modules", "pretrainer"}, "the file"
    )
    for name in ("sample_rate", "num_spks", "separator", "modules"):
        if name not in top:
            refuse(root, f"no '{name}'")
    for name in ("sample_rate", "num_spks"):
        if not (isinstance(top[name], yaml.ScalarNode) and top[name].tag == _YAML + "int"):
            refuse(top[name], f"{name} is not an integer")
    sep = top["separator"]
    if not (sep.tag or "").startswith("!new:"):
        refuse(sep, f"separator is '{sep.tag}', not a !new: of an sb_mamba separator")
    cls = sep.tag[len("!new:") :]
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
    ref_to_separator(
        mapping(top["modules"], {"separator"}, "modules").get("separator", top["modules"]),
        "modules.separator",
    )
    if "pretrainer" in top:
        node = top["pretrainer"]
        if node.tag != "!new:" + _PRETRAINER:
            refuse(node, f"pretrainer is '{node.tag}', not SpeechBrain's Pretrainer")
        loadables = mapping(node, {"loadables"}, "pretrainer").get("loadables", node)
        ref_to_separator(
            mapping(loadables, {"separator"}, "pretrainer.loadables").get("separator", loadables),
            "pretrainer.loadables.separator",
        )
    comment = re.search(r"^# from (.{1,300})$", _read_text(path, "description"), re.M)
    origin = (
        comment.group(1).strip() + ", " if comment else ""
    ) + f"migrated from the old layout ({OLD_YAML} + {OLD_WEIGHTS})"
    args = without_run_options(args, str(path), f"rewrite it with `sb-mamba migrate {folder}`")
    config = ModelConfig(
        cls, args, _construct(top["sample_rate"]), _construct(top["num_spks"]), origin=origin
    )
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
        self.nodes = {
            k.value: v
            for k, v in root.value
            if isinstance(k, yaml.ScalarNode) and k.tag == _YAML + "str"
        }
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
                value = (
                    value.get(index.strip(), _Opaque(tag, where))
                    if isinstance(value, (dict, _RunYaml))
                    else _Opaque(tag, where)
                )
            return value
        if tag.startswith("!new:"):
            if isinstance(node, yaml.MappingNode):
                return _New(
                    tag[5:],
                    {
                        k.value: self.value(v, depth + 1)
                        for k, v in node.value
                        if isinstance(k, yaml.ScalarNode)
                    },
                )
            if isinstance(node, yaml.ScalarNode) and node.value == "":
                return _New(tag[5:], {})
            return _Opaque(tag + " (positional arguments)", where)
        if tag.startswith("!include:"):
            target = Path(tag[len("!include:") :].strip())
            target = target if target.is_absolute() else self.path.parent / target
            target = target if target.exists() else _shipped_fragment(target)
            overrides = (
                {
                    k.value: self.value(v, depth + 1)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode)
                }
                if isinstance(node, yaml.MappingNode)
                else {}
            )
            return _RunYaml(target, overrides, self.budget, self.depth + 1)
        if isinstance(node, yaml.MappingNode) and tag == _YAML + "map":
            return {
                k.value: self.value(v, depth + 1)
                for k, v in node.value
                if isinstance(k, yaml.ScalarNode)
            }
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


def _yaml_value(value, where):
    """A resolved training-YAML value as plain Python, or one UserError."""
    if isinstance(value, _Opaque):
        raise UserError(
            f"{value.where}: '{value.tag}' cannot be read as data (another run's YAML is "
            f"read without running it): give {where} as a plain value or a !ref of one."
        )
    if isinstance(value, (_New, _RunYaml)):
        raise UserError(
            f"{where} is an object, not a plain value; nested objects are not "
            "supported as separator arguments."
        )
    if isinstance(value, dict):
        return {str(k): _yaml_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_value(v, where) for v in value]
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
        ``separator_args`` as given, without run options (``ssm_backend``).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "hyperparams.yaml"
    >>> _ = path.write_text("sample_rate: 8000\\nrun: !applyref:os.getcwd []\\nmodules:\\n"
    ...     "  separator: !new:sb_mamba.lobes.sepmamba.SepMamba\\n    dim: 8\\n"
    ...     "    num_blocks: 1\\n")
    >>> cfg = read_run_hparams(path)
    >>> cfg.separator_args, cfg.sample_rate, cfg.num_spks  # num_spks: SepMamba's default
    ({'dim': 8, 'num_blocks': 1}, 8000, 2)
    """
    run = _RunYaml(hparams_file)
    modules = run.get("modules")
    sep = modules.get("separator") if isinstance(modules, (dict, _RunYaml)) else None
    if sep is None:
        raise UserError(f"{hparams_file} has no `modules: separator:` entry.")
    if not isinstance(sep, _New):
        what = sep.tag if isinstance(sep, _Opaque) else type(sep).__name__
        raise UserError(f"{hparams_file}: modules.separator must be a !new: object, got '{what}'.")
    separator_class(sep.cls)
    args = without_run_options(
        {k: _yaml_value(v, f"separator.{k}") for k, v in sep.args.items()}, str(hparams_file)
    )
    rate = run.get("sample_rate", args.get("sample_rate"))
    if rate is None:
        raise UserError(
            f"{hparams_file} has no sample_rate (the rate the model was trained "
            "at): add e.g. `sample_rate: 8000` to it."
        )
    rate = _yaml_value(rate, "sample_rate")
    spks = run.get("num_spks", args.get("num_spks"))
    if spks is None:  # the separator's own default: what it outputs
        spks = build_separator(sep.cls, args).get_model_args().get("num_spks")
    if spks is None:
        raise UserError(f"{hparams_file} has no num_spks: add e.g. `num_spks: 2` to it.")
    return ModelConfig(sep.cls, args, rate, _yaml_value(spks, "num_spks"))
