"""The model folder's config: file names, the separator classes, ``config.json``.

Part of :mod:`sb_mamba.modelfolder` (see there).

Authors
-------
 * sb_mamba developers
"""

import dataclasses
import importlib
import json
import math
import os
import re

import torch
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
AVERAGE_KEY = "weight_average"  # a run's checkpoint: weight_average.ckpt (ema_decay)
FORMAT = "sb_mamba-model"
FORMAT_VERSION = 1
RATE_RANGE = (1000, 384000)  # Hz a model may run at
MAX_TEXT_BYTES = 4 << 20  # a config or YAML bigger than this is not a model description
PAPERS = {
    "SepMamba": "Avenstrup et al., SepMamba, ICASSP 2025, https://arxiv.org/abs/2410.20997",
    "SPMamba": "Li et al., SPMamba, ICME 2025, https://arxiv.org/abs/2404.02063",
    "S4M": "Chen et al., S4M, Interspeech 2023, https://arxiv.org/abs/2305.16932",
}


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
    ok = (
        isinstance(obj, type)
        and issubclass(obj, torch.nn.Module)
        and issubclass(obj, ModelArgsMixin)
        and obj.__module__ == module
    )
    if not ok:
        raise UserError(
            f"{path} is not a separator of sb_mamba (a sb_mamba.lobes class); refusing to build it."
        )
    return obj


def build_separator(path, kwargs):
    """Build the separator ``path`` names with ``kwargs`` (plain values).

    Arguments
    ---------
    path : str
        Dotted path of the class, checked by :func:`separator_class`.
    kwargs : dict
        Constructor arguments.

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> net = build_separator("sb_mamba.lobes.sepmamba.SepMamba", {"dim": 8, "num_blocks": 1})
    >>> net.get_model_args()["dim"]
    8
    """
    cls = separator_class(path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise UserError(
            f"Cannot build {path} from its stored arguments: {' '.join(str(e).split())}."
        ) from None


def hub_source(source, file=False):
    """Whether ``source`` names something remote rather than a local path.

    A URL, or, when no such local path exists and it starts with none of
    ``/ . ~``, a HuggingFace id: ``owner/name`` (a model, ``file=False``) or
    ``owner/name/path`` (a file in a repo, ``file=True``).

    Example
    -------
    >>> hub_source("speechbrain/sepformer-wsj02mix"), hub_source("./models/mine")
    (True, False)
    >>> hub_source("owner/repo/mix.wav", file=True), hub_source("a/b/c")
    (True, False)
    """
    text = str(source)
    if text.startswith(("http://", "https://")):
        return True
    if text.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(text)):
        return False
    parts = text.split("/")
    ok = all(re.fullmatch(r"[\w.-]+", p) for p in parts[:2])
    return ok and (len(parts) >= 3 if file else len(parts) == 2)


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
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text, where):
        """Parse and check ``config.json`` text (``where`` names it in errors)."""
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise UserError(f"{where} is not valid JSON ({e}): re-export the model.") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(
                f'{where} is not an sb_mamba model config (no "format": '
                f'"{FORMAT}"): re-export the model.'
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{where} has format_version {data.get('format_version')!r}; "
                f"this sb_mamba reads {FORMAT_VERSION}: upgrade sb_mamba."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - fields - {"format", "format_version"})
        missing = sorted(f for f in fields - set(data) if f != "origin")
        if extra or missing:
            raise UserError(
                f"{where}: "
                + "; ".join(
                    [f"unknown keys {extra}"] * bool(extra)
                    + [f"missing keys {missing}"] * bool(missing)
                )
                + ": re-export the model."
            )
        config = cls(**{k: data[k] for k in fields if k in data})
        config.check(where)
        config.separator_args = without_run_options(
            config.separator_args, where, "delete it from config.json's separator_args"
        )
        return config

    def check(self, where="the model config"):
        """Refuse values no model folder may hold (one :class:`UserError`)."""
        args, rate, spks = self.separator_args, self.sample_rate, self.num_spks
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise UserError(f"{where}: separator_args must be a mapping of names to values.")
        _check_plain(args, f"{where}: separator_args")
        if type(rate) is not int or not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise UserError(
                f"{where}: sample_rate {rate!r} is not a model rate (an integer "
                f"from {RATE_RANGE[0]} to {RATE_RANGE[1]} Hz); give the rate the "
                "model was trained at (e.g. --sample-rate 8000)."
            )
        if type(spks) is not int or not 1 <= spks <= 64:
            raise UserError(f"{where}: num_spks {spks!r} is not a number of sources (1 to 64).")
        if "num_spks" in args and args["num_spks"] != spks:
            raise UserError(
                f"{where}: num_spks {spks} but the separator's num_spks is "
                f"{args['num_spks']}: re-export the model."
            )
        if not isinstance(self.origin, str):
            raise UserError(f"{where}: origin must be a string.")
        separator_class(self.separator_class)


RUN_OPTIONS = ("ssm_backend",)  # constructor arguments that are run options, never stored
_warned = set()


def without_run_options(args, where, fix=None):
    """``args`` without the run options an older sb_mamba stored with a model.

    Arguments
    ---------
    args : dict
        Separator arguments as stored.
    where : str
        Names the source in the warning.
    fix : str, optional
        How to stop storing them; None: drop them silently (a training
        run's YAML, where the option was the run's).

    Returns
    -------
    dict

    Example
    -------
    >>> without_run_options({"dim": 8, "ssm_backend": "torch"}, "run.yaml")
    {'dim': 8}
    """
    found = [k for k in RUN_OPTIONS if k in args]
    if found and fix and (where, tuple(found)) not in _warned:
        _warned.add((where, tuple(found)))
        logger.warning(
            "%s stores %s, a run option now (MambaSeparator."
            "from_hparams(run_opts=...), sb-mamba --backend): ignored; %s.",
            where,
            ", ".join(found),
            fix,
        )
    return {k: v for k, v in args.items() if k not in RUN_OPTIONS}


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _check_plain(value, where, depth=0):
    """Check that ``value`` is built of JSON-plain values only."""
    if depth > 20:
        raise UserError(f"{where} is nested too deeply.")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where}: key {k!r} is not a string.")
            _check_plain(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v, where, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} is {value}: not a finite number.")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise UserError(f"{where}: {type(value).__name__} is not a plain value.")
