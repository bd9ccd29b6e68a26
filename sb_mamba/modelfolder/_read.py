"""Reading a model folder: its config and weights, as data.

Part of :mod:`sb_mamba.modelfolder` (see there).

Authors
-------
 * sb_mamba developers
"""

import re
from pathlib import Path

import torch
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import inside
from sb_mamba.errors import UserError
from sb_mamba.modelfolder._config import (
    AVERAGE_KEY,
    CONFIG,
    MAX_TEXT_BYTES,
    OLD_WEIGHTS,
    OLD_YAML,
    WEIGHTS,
    ModelConfig,
    build_separator,
)

logger = get_logger(__name__)


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
        raise UserError(
            f"{path} leads outside the model folder {folder} (a link): refusing "
            "to read it; copy the real file into the folder."
        )
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
        raise FileNotFoundError(
            2, "Not a model folder (no config.json; see sb-mamba export)", str(folder)
        )
    return ModelConfig.from_json(_read_text(path, "config"), str(path))


def read_safetensors(path):
    """A ``.safetensors`` file as a dict of CPU tensors (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        why = " ".join(str(e).split())[:200]
        raise UserError(
            f"{path} is not a readable safetensors file ({why}): re-download "
            "or re-export the model."
        ) from None


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
        logger.warning(
            "%s is unpickled with weights_only=False, which runs any code the "
            "file holds (you asked to trust it).",
            path,
        )
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
                "trust where it comes from."
            ) from None
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"Cannot read {path}: not a PyTorch weights file ({first}).") from None
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise UserError(
            f"Cannot read {path}: not a PyTorch weights file ({' '.join(str(e).split())[:200]})."
        ) from None


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
    state = read_safetensors(path) if path.suffix == ".safetensors" else read_pickled_weights(path)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(
            f"{path} is not a flat state_dict (names -> tensors): give a "
            "model folder or a separator.ckpt of a run."
        )
    return state


def read_checkpoint_weights(paramfiles):
    """The separator's weights in a run's checkpoint, and whether they are averaged.

    A run trained with ``ema_decay`` keeps the average of its weights beside
    them (``weight_average.ckpt``, PyTorch's ``AveragedModel``: ``n_averaged``
    and ``module.*``); its validation ranked that average, so it is what
    the checkpoint stands for. Otherwise, or before the average's first
    step, ``separator.ckpt``.

    Arguments
    ---------
    paramfiles : dict
        Recoverable name -> file, as a SpeechBrain ``Checkpoint`` has them.

    Returns
    -------
    state : dict
        Parameter name -> tensor, under the separator's names.
    averaged : bool
        Whether ``state`` is the weight average.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save({"w": torch.zeros(2)}, folder / "separator.ckpt")
    >>> avg = {"n_averaged": torch.tensor(5), "module.w": torch.ones(2)}
    >>> torch.save(avg, folder / "weight_average.ckpt")
    >>> files = {"separator": folder / "separator.ckpt", AVERAGE_KEY: folder / "weight_average.ckpt"}
    >>> state, averaged = read_checkpoint_weights(files)
    >>> averaged, state["w"].shape
    (True, torch.Size([2]))
    """
    if AVERAGE_KEY in paramfiles:
        avg = read_weights(paramfiles[AVERAGE_KEY])
        if int(avg.get("n_averaged", torch.zeros(()))) > 0:
            prefix = "module."
            return {k[len(prefix) :]: v for k, v in avg.items() if k.startswith(prefix)}, True
    return read_weights(paramfiles["separator"]), False


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
        raise FileNotFoundError(
            2,
            "Not a model folder (no config.json or old-layout "
            "hyperparams.yaml + separator.ckpt; see sb-mamba export)",
            str(folder),
        )
    if kind == "old":
        from sb_mamba.modelfolder._legacy import read_old_layout  # it reads with ours

        config, state = read_old_layout(folder)
        if migrate_hint:
            logger.warning(
                "%s is in the old layout (hyperparams.yaml + separator.ckpt), read "
                "as data; rewrite it once with `sb-mamba migrate %s`.",
                folder,
                folder,
            )
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
        ``{"num_spks": 3}``; the scan backend is a run option:
        :func:`sb_mamba.nnet.mamba.set_ssm_backend`).

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
    net = build_separator(config.separator_class, {**config.separator_args, **(overrides or {})})
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"The weights of {where} do not fit its separator "
            f"({config.separator_class}): {' '.join(str(e).split())[:400]}"
        ) from None
    return net
