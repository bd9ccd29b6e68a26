"""Writing a model folder atomically, and ``sb-mamba migrate``.

Part of :mod:`sb_mamba.modelfolder` (see there).

Authors
-------
 * sb_mamba developers
"""

import os
import shutil
import tempfile
from pathlib import Path

from speechbrain.utils.logger import get_logger

from sb_mamba.audio import inside
from sb_mamba.errors import UserError
from sb_mamba.modelfolder._config import CARD, CONFIG, OLD_WEIGHTS, OLD_YAML, WEIGHTS, ModelConfig
from sb_mamba.modelfolder._legacy import read_old_layout
from sb_mamba.modelfolder._read import layout, load_separator

logger = get_logger(__name__)


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
    >>> from sb_mamba.modelfolder import build_separator
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
    state = {
        k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().contiguous().clone()
        for k, v in state.items()
    }
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
            logger.info("Removed the old-layout %s and %s of %s.", OLD_YAML, OLD_WEIGHTS, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_target(target, sources):
    """Refuse a target folder that writing a model there would damage."""
    if target.is_symlink():
        raise UserError(
            f"{target} is a link: model folders are never written through "
            "links; give the real folder."
        )
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a folder; pick another target.")
    for src in sources:
        if src is not None and Path(src).exists() and inside(src, target):
            raise UserError(
                f"The target {target} is (or holds) {src}, which this command "
                "reads: writing there would overwrite the run; choose another "
                "target folder."
            )
    if (target / OLD_YAML).exists() and not _is_old_model_yaml(target):
        raise UserError(
            f"{target} holds a {OLD_YAML} that is not a model description (a "
            "training run folder?): choose another target folder."
        )


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
        raise FileNotFoundError(
            2, "Not an old-layout model folder (no hyperparams.yaml + separator.ckpt)", str(folder)
        )
    config, state = read_old_layout(folder)
    keep = {}
    if target is not None:  # bring the card and records along
        keep = {
            p.name: p
            for p in folder.iterdir()
            if p.is_file()
            and not p.is_symlink()
            and p.name not in (OLD_YAML, OLD_WEIGHTS, CONFIG, WEIGHTS, CARD)
            and not p.name.startswith(".")
        }
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
