"""Files that ship inside the package: model fragments and the shipped models.

``hparams/`` and ``pretrained/`` sit at the top of the repository and are
installed as the packages ``sb_mamba.hparams`` and ``sb_mamba.pretrained``
(``setup.py`` maps them), so the same names work from a clone installed with
``pip install -e .`` and from a wheel. Nothing here looks outside the
installed package.

Authors
-------
 * sb_mamba developers
"""

import importlib.resources
from pathlib import Path

DEFAULT_MODEL = "sepmamba-8k"  # the general model: rooms, noise, many voices, single talkers
DEMO_MODEL = "sepmamba-librimini-8k"  # the clean LibriSpeech demo of the LibriMini recipe


def _package_root(package):
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"{package} is not installed: install sb_mamba with `pip install .` "
            "(or `pip install -e .` in a clone) so that its model fragments and "
            "demo model come with it."
        ) from None


def _find(package, name, what):
    root = _package_root(package)
    path = root / name
    if not path.exists():
        found = sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.suffix in (".yaml", "")
            and p.name != "__pycache__"
            and "__pycache__" not in p.parts
        )
        raise FileNotFoundError(
            f"No {what} {name!r} in {root}; available: {', '.join(found) or 'none'}."
        )
    return str(path)


def hparams_path(name):
    """Path of a shipped hyperparameter fragment, e.g. ``"models/sepmamba_s.yaml"``.

    Arguments
    ---------
    name : str
        Relative to ``hparams/``.

    Returns
    -------
    str

    Example
    -------
    >>> Path(hparams_path("models/sepmamba_s.yaml")).name
    'sepmamba_s.yaml'
    """
    return _find("sb_mamba.hparams", name, "model fragment")


def load_fragment(name, overrides=None):
    """Load a shipped model fragment (``hparams/models/<name>``) with overrides.

    The fragments are sb_mamba's own HyperPyYAML (what recipes ``!include:``),
    never a file that came with a model folder.

    Arguments
    ---------
    name : str
        ``"sepmamba_s"`` or ``"sepmamba_s.yaml"``.
    overrides : dict, optional
        Values of the fragment's keys (e.g. ``{"dim": 8}``).

    Returns
    -------
    dict
        The fragment's keys, ``separator`` built.

    Example
    -------
    >>> load_fragment("sepmamba_s", {"dim": 8, "num_blocks": 1})["separator"].get_model_args()["dim"]
    8
    """
    from hyperpyyaml import load_hyperpyyaml

    name = name if name.endswith(".yaml") else f"{name}.yaml"
    with open(hparams_path(f"models/{name}")) as f:
        return load_hyperpyyaml(f, overrides)


def shipped_models():
    """Names of the models shipped inside the package (folders under ``pretrained/``).

    Returns
    -------
    list of str

    Example
    -------
    >>> DEFAULT_MODEL in shipped_models() and "sepmamba-causal-8k" in shipped_models()
    True
    """
    root = _package_root("sb_mamba.pretrained")
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def pretrained_path(name=DEFAULT_MODEL):
    """Folder of a shipped model (hub layout), for ``MambaSeparator.from_hparams``.

    Arguments
    ---------
    name : str
        Folder name under ``pretrained/``: ``sepmamba-8k`` (the default model
        of ``sb-mamba separate`` and ``MambaSeparator.from_hparams()``) or
        ``sepmamba-librimini-8k`` (:data:`DEMO_MODEL`).

    Returns
    -------
    str

    Example
    -------
    >>> Path(pretrained_path()).name, Path(pretrained_path(DEMO_MODEL)).name
    ('sepmamba-8k', 'sepmamba-librimini-8k')
    """
    path = _find("sb_mamba.pretrained", name, "shipped model")
    if not (Path(path) / "config.json").is_file():  # sb_mamba.modelfolder.CONFIG
        raise FileNotFoundError(f"The shipped model {path} has no config.json.")
    return path
