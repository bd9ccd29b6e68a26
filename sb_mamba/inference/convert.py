"""Turn an official SPMamba or SepMamba checkpoint into an sb_mamba model folder.

::

    sb-mamba convert epoch=123.ckpt spmamba-libri2mix          # SPMamba, Lightning
    sb-mamba convert best_model.pth sepmamba-wsj0 --sample-rate 8000  # SepMamba

sb_mamba's :class:`~sb_mamba.lobes.spmamba.SPMamba` and
:class:`~sb_mamba.lobes.sepmamba.SepMamba` are the architectures of the
official code (``JusperLee/SPMamba``, ``itsmeeandrew/SepMamba``): loaded with
the official weights they give the official outputs. The folder written here
has the layout of ``sb-mamba export`` (:mod:`sb_mamba.modelfolder`:
``config.json``, ``separator.safetensors``, ``README.md``) and loads with
``MambaSeparator.from_hparams(source=OUT_DIR)``.

Formats read (family and configuration are detected from the keys and the
tensors' shapes; stored training arguments fill in what no tensor holds):

* SPMamba as a PyTorch-Lightning ``.ckpt`` (keys ``audio_model.*``; the
  flattened training config in ``hyper_parameters``, the nested one in
  ``training_config``), as look2hear's ``serialize()`` package
  (``best_model.pth``: ``model_name``, ``state_dict``, ``model_args``) or as a
  bare ``state_dict``. Its keys are sb_mamba's keys.
* SepMamba as a bare ``state_dict`` or its training script's
  ``best_model.pth`` (``model_state_dict``, ``optimizer_state_dict``, ...),
  bidirectional or causal, with the key renames of :data:`SEPMAMBA_RENAMES`.

Files are read with ``torch.load(weights_only=True)``
(:func:`sb_mamba.modelfolder.read_pickled_weights`): tensors and plain
containers only, plus the harmless data classes of :data:`SAFE_GLOBALS`.
Anything else is refused with the name of the class (unpickling it could run
code) unless ``--trust-checkpoint`` is given. Every tensor must land in the
model and every parameter of the model must be given (a strict load); any
error leaves ``OUT_DIR`` untouched, since the folder is written to a
temporary folder beside it and moved into place only when complete. The
sample rate is checked (1 to 384 kHz), whether it comes from the file or
``--sample-rate``.

Authors
-------
 * sb_mamba developers
"""

import argparse
import hashlib
import math
import re
from pathlib import Path

import torch
from speechbrain.utils.logger import get_logger

from sb_mamba import modelfolder
from sb_mamba.errors import UserError
from sb_mamba.modelfolder import build_separator, model_card

logger = get_logger(__name__)

SPMAMBA = "sb_mamba.lobes.spmamba.SPMamba"
SEPMAMBA = "sb_mamba.lobes.sepmamba.SepMamba"
FAMILIES = {"spmamba": SPMAMBA, "sepmamba": SEPMAMBA}
SOURCES = {
    SPMAMBA: "JusperLee/SPMamba (look2hear), https://github.com/JusperLee/SPMamba",
    SEPMAMBA: "itsmeeandrew/SepMamba (DTU), https://github.com/itsmeeandrew/SepMamba",
}

# Classes that official files pickle besides tensors and containers, all plain
# data: look2hear's serialize() stores torch.__version__ (a TorchVersion, a
# str); older Lightning files keep their hyper-parameters in a Namespace.
SAFE_GLOBALS = [torch.torch_version.TorchVersion, argparse.Namespace]

# Official SepMamba key -> sb_mamba key (applied in this order).
SEPMAMBA_RENAMES = [
    (r"^down\.(\d+)\.conv1d\.", r"down.\1.conv."),
    (r"\.convT1d\.", ".convt."),
    (r"\.conv1d_fusion\.", ".fusion."),
    (r"\.mamba_layer\.forward_mamba_block\.mamba_blocks\.", ".mamba.forward_blocks."),
    (r"\.mamba_layer\.backward_mamba_block\.mamba_blocks\.", ".mamba.backward_blocks."),
]

# STFT size -> (sample rate, hop) of the official SPMamba configs
# (Libri2Mix / WHAM! / WSJ0 at 8 kHz, Echo2Mix at 16 kHz).
SPMAMBA_STFT = {256: (8000, 64), 512: (16000, 128)}

# Where a training config keeps each value: keys of the config flattened with
# "_" (look2hear's hyper_parameters; its nested training_config flattens to
# the same names), most specific first.
CONFIG_KEYS = {
    "sample_rate": ["datamodule_data_config_sample_rate", "sample_rate"],
    "n_fft": ["audionet_audionet_config_n_fft", "n_fft"],
    "hop_length": ["audionet_audionet_config_stride", "stride", "hop_length"],
    "emb_hs": ["audionet_audionet_config_emb_hs", "emb_hs"],
    "eps": ["audionet_audionet_config_eps", "eps"],
    "attn_approx_qk_dim": ["audionet_audionet_config_attn_approx_qk_dim", "attn_approx_qk_dim"],
    "model_name": ["audionet_audionet_name", "model_name"],
}


def sha256(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path, trust=False):
    """Read a checkpoint without running code that came with it.

    Arguments
    ---------
    path : str or Path
        The file.
    trust : bool
        Unpickle anything (``weights_only=False``), with a warning.

    Returns
    -------
    object
        What the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such checkpoint file", str(path))
    try:
        return modelfolder.read_pickled_weights(path, SAFE_GLOBALS, trust=trust)
    except UserError as e:
        if "holds a" in str(e):
            raise
        raise UserError(
            str(e).replace("not a PyTorch weights file", "not a PyTorch checkpoint")
        ) from None


def _flatten(d, prefix=""):
    """A nested dict as ``{"a_b_c": value}`` (look2hear's ``flatten_dict``)."""
    flat = {}
    items = vars(d).items() if isinstance(d, argparse.Namespace) else d.items()
    for k, v in items:
        key = f"{prefix}_{k}" if prefix else str(k)
        if isinstance(v, (dict, argparse.Namespace)):
            flat.update(_flatten(v, key))
        else:
            flat[key] = v
    return flat


def _config_scalar(value):
    """A stored config value as int / float / str, or None if it is no scalar."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, bool) or value is None or value == "None":
        return None
    return value if isinstance(value, (int, float, str)) else None


def unwrap(obj, name):
    """The state_dict of a loaded checkpoint, what format it was, and its config.

    Arguments
    ---------
    obj : object
        What :func:`load_checkpoint` returned.
    name : str
        The file, for messages.

    Returns
    -------
    state : dict
        Parameter name -> tensor, a wrapper prefix (``audio_model.``,
        ``module.``) removed.
    fmt : str
        The format, in words.
    config : dict
        Stored training arguments, flattened (:data:`CONFIG_KEYS`).
    """
    if not isinstance(obj, dict):
        raise UserError(
            f"{name} holds a {type(obj).__name__}, not a dict of weights; "
            "give an official SPMamba or SepMamba checkpoint."
        )
    config = {}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, fmt = obj, "bare state_dict"
    elif isinstance(obj.get("model_state_dict"), dict):
        state, fmt = obj["model_state_dict"], "SepMamba training checkpoint, model_state_dict"
    elif isinstance(obj.get("state_dict"), dict) and "model_name" in obj:
        state, fmt = obj["state_dict"], "look2hear serialize() package"
        config = _flatten({"model_name": obj["model_name"]} | dict(obj.get("model_args") or {}))
    elif isinstance(obj.get("state_dict"), dict):
        state, fmt = obj["state_dict"], "PyTorch-Lightning checkpoint"
        for key in ("training_config", "hyper_parameters"):  # the flat one wins
            if isinstance(obj.get(key), (dict, argparse.Namespace)):
                config.update(_flatten(obj[key]))
    else:
        raise UserError(
            f"{name} is a dict without weights (keys: "
            f"{', '.join(map(str, list(obj)[:8]))}); give an official "
            "SPMamba or SepMamba checkpoint."
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{name}: '{bad[0]}' in its state_dict is not a tensor.")
    state = dict(state)
    for prefix in ("audio_model.", "module."):
        if any(k.startswith(prefix) for k in state):
            others = [k for k in state if not k.startswith(prefix)]
            if others and prefix != "audio_model.":
                continue
            if others:
                raise UserError(
                    f"{name}: {_listing(others)} outside the model "
                    "(audio_model.*) would be left over; nothing written."
                )
            state = {k[len(prefix) :]: v for k, v in state.items()}
    config = {k: _config_scalar(v) for k, v in config.items()}
    return state, fmt, {k: v for k, v in config.items() if v is not None}


def _listing(keys, n=4):
    """``'a', 'b' (+3 more)``."""
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(f"'{k}'" for k in keys[:n]) + more


def detect_family(state, config, name):
    """``"spmamba"`` or ``"sepmamba"`` from the keys (or the stored model name)."""
    stored = str(config.get("model_name", "")).lower()
    if stored in FAMILIES:
        return stored
    if any(".attn_concat_proj." in k for k in state) and "deconv.weight" in state:
        return "spmamba"
    if any(k.startswith("down.") for k in state) and "decoder.weight" in state:
        return "sepmamba"
    raise UserError(
        f"{name}: cannot tell SPMamba from SepMamba by its keys "
        f"({_listing(state, 3)}); pass --model spmamba or --model sepmamba."
    )


def _config_value(config, what):
    for key in CONFIG_KEYS[what]:
        if key in config:
            return config[key]
    return None


class _Shapes:
    """Reads tensor shapes, with one clear error for a missing key."""

    def __init__(self, state, name, family):
        self.state, self.name, self.family = state, name, family

    def __call__(self, key):
        if key not in self.state:
            raise UserError(
                f"{self.name} has no '{key}', which every official "
                f"{self.family} checkpoint has; nothing written."
            )
        return tuple(self.state[key].shape)

    def count(self, pattern):
        """Number of distinct indices ``i`` of keys matching ``pattern`` (with (\\d+))."""
        found = {int(m.group(1)) for k in self.state if (m := re.match(pattern, k))}
        if found and found != set(range(len(found))):
            raise UserError(
                f"{self.name}: indices {sorted(found)} of {pattern} "
                "are not 0..n-1; nothing written."
            )
        return len(found)


def _mamba_args(shape, mixer, d_model):
    """d_state, d_conv, expand of a Mamba mixer (``mixer``: its key prefix)."""
    d_inner, d_state = shape(mixer + "A_log")
    if d_inner % d_model:
        raise UserError(
            f"{shape.name}: Mamba inner width {d_inner} is no multiple "
            f"of its model width {d_model}; nothing written."
        )
    return {
        "d_state": d_state,
        "d_conv": shape(mixer + "conv1d.weight")[-1],
        "expand": d_inner // d_model,
    }


def sepmamba_config(state, config, name):
    """Rename official SepMamba keys; return (sb_mamba state, args, notes)."""
    renamed = {}
    for key, value in state.items():
        for pattern, repl in SEPMAMBA_RENAMES:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    shape = _Shapes(renamed, name, "SepMamba")
    dim, _, kernel = shape("down.0.conv.weight")
    levels = shape.count(r"down\.(\d+)\.")
    kernels = {shape(f"down.{i}.conv.weight")[-1] for i in range(levels)}
    kernels |= {shape(f"up.{i}.convt.weight")[-1] for i in range(levels - 1)}
    kernels.add(shape("decoder.weight")[-1])
    if len(kernels) > 1:
        raise UserError(
            f"{name}: kernel sizes {sorted(kernels)} differ between levels; "
            "sb_mamba's SepMamba has one kernel size; nothing written."
        )
    causal = not any(".mamba.backward_blocks." in k for k in renamed)
    blocks = shape.count(r"down\.0\.mamba\.forward_blocks\.(\d+)\.")
    if causal and blocks % 2:
        raise UserError(
            f"{name}: a causal SepMamba with {blocks} blocks per layer; "
            "sb_mamba's causal SepMamba has an even number; nothing written."
        )
    args = {
        "num_spks": shape("decoder.weight")[1],
        "dim": dim,
        "num_blocks": blocks // 2 if causal else blocks,
        "kernel_size": kernel,
        "stride": 2,
        "num_levels": levels,
        "causal": causal,
        "activation": "prelu" if any(k.endswith(".act.weight") for k in renamed) else "relu",
        **_mamba_args(shape, "down.0.mamba.forward_blocks.0.mixer.", dim),
    }
    notes = {
        "stride": "not stored in the weights; 2 in every official config",
        "activation": "PReLU weights present"
        if args["activation"] == "prelu"
        else "no PReLU weights; ReLU as in every official config",
        "causal": "no backward Mamba stack" if causal else "forward and backward stacks",
        "num_blocks": (
            f"{blocks} blocks per causal stack = 2 x {blocks // 2}"
            if causal
            else "Mamba blocks per direction"
        ),
    }
    return renamed, args, notes


def spmamba_config(state, config, name):
    """Return (state, args, notes) of an SPMamba state_dict (keys as sb_mamba's)."""
    shape = _Shapes(state, name, "SPMamba")
    emb_dim, in_ch, _, _ = shape("conv.0.weight")
    if in_ch != 2:
        raise UserError(
            f"{name}: {in_ch // 2} input microphones; sb_mamba's SPMamba "
            "takes one; nothing written."
        )
    blk = "blocks.0."
    two_d_model, _, emb_ks = shape(blk + "intra_linear.weight")
    n_freqs = shape(blk + "attn_concat_proj.2.gamma")[-1]
    n_fft = 2 * (n_freqs - 1)
    qk_dim = shape(blk + "attn_conv_Q_0.0.weight")[0]
    notes = {"n_fft": f"{n_freqs} bins in the attention norms"}
    stored_fft = _config_value(config, "n_fft")
    if stored_fft is not None and int(stored_fft) != n_fft:
        raise UserError(
            f"{name}: its training config says n_fft {stored_fft} but the "
            f"weights are for n_fft {n_fft}; nothing written."
        )
    hop = _config_value(config, "hop_length")
    if hop is None:
        hop = SPMAMBA_STFT.get(n_fft, (None, n_fft // 4))[1]
        notes["hop_length"] = "not stored; n_fft / 4 as in every official config"
    else:
        notes["hop_length"] = "training config"
    approx = _config_value(config, "attn_approx_qk_dim")
    for candidate in (approx, 512, qk_dim * n_freqs):  # any value giving qk_dim
        if candidate is not None and math.ceil(int(candidate) / n_freqs) == qk_dim:
            approx = int(candidate)
            break
    emb_hs, eps = _config_value(config, "emb_hs"), _config_value(config, "eps")
    notes["emb_hs"] = (
        "training config" if emb_hs is not None else "not stored; 1 in every official config"
    )
    notes["eps"] = (
        "training config" if eps is not None else "not stored; 1e-5 in every official config"
    )
    args = {
        "num_spks": shape("deconv.weight")[1] // 2,
        "n_fft": n_fft,
        "hop_length": int(hop),
        "num_layers": shape.count(r"blocks\.(\d+)\."),
        "emb_dim": emb_dim,
        "emb_ks": emb_ks,
        "emb_hs": int(emb_hs if emb_hs is not None else 1),
        "attn_heads": shape.count(blk.replace(".", r"\.") + r"attn_conv_Q_(\d+)\."),
        "attn_approx_qk_dim": approx,
        "eps": float(eps if eps is not None else 1e-5),
        **_mamba_args(shape, blk + "intra_mamba.forward_blocks.0.mixer.", two_d_model // 2),
    }
    return state, args, notes


def _rate(value, where, name):
    """A sample rate as an int in :data:`~sb_mamba.modelfolder.RATE_RANGE`, or a UserError."""
    low, high = modelfolder.RATE_RANGE
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if not (rate.is_integer() and low <= rate <= high):
        raise UserError(
            f"{name}: {where} is {value!r}, not a sample rate from {low} to {high} "
            "Hz; nothing written. Pass the rate the model was trained at, e.g. "
            "--sample-rate 8000."
        )
    return int(rate)


def _sample_rate(family, args, config, override, name):
    """(rate, where it came from), or the UserError that asks for --sample-rate."""
    if override is not None:
        return _rate(override, "--sample-rate", name), "--sample-rate"
    stored = _config_value(config, "sample_rate")
    if stored is not None:
        return _rate(stored, "its training config's sample_rate", name), "training config"
    if family == "spmamba" and args["n_fft"] in SPMAMBA_STFT:
        rate = SPMAMBA_STFT[args["n_fft"]][0]
        logger.warning(
            "%s does not store its sample rate: %d Hz, from n_fft %d as the "
            "official configs pair them (--sample-rate overrides).",
            name,
            rate,
            args["n_fft"],
        )
        return rate, f"not stored; n_fft {args['n_fft']} is the official {rate} Hz setting"
    hint = (
        "the official SepMamba models are trained on WSJ0-2mix at 8 kHz"
        if family == "sepmamba"
        else f"n_fft {args['n_fft']} is no official setting"
    )
    raise UserError(
        f"{name} does not say its sample rate ({hint}): pass --sample-rate, "
        "e.g. --sample-rate 8000."
    )


def check_state_keys(model, state, name):
    """One UserError naming the missing, unexpected and misshapen keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"'{k}' {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys (left over) {_listing(unexpected)}")
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if misshapen:
        problems.append(f"shapes (file vs model) {', '.join(misshapen[:3])}")
    if problems:
        raise UserError(
            f"{name} does not fit {type(model).__name__}: {'; '.join(problems)}. Nothing written."
        )
    model.load_state_dict(state, strict=True)


def convert(
    checkpoint,
    out_dir,
    model=None,
    sample_rate=None,
    num_spks=None,
    trust_checkpoint=False,
    name=None,
):
    """Convert an official checkpoint into a hub-layout model folder.

    Arguments
    ---------
    checkpoint : str or Path
        The official file (``.ckpt``, ``best_model.pth``, a state_dict).
    out_dir : str or Path
        The model folder to write (created; its three files are replaced).
    model : str, optional
        ``"spmamba"`` or ``"sepmamba"`` (default: from the keys).
    sample_rate : int, optional
        The model's rate, where the file does not say it (or to override it).
    num_spks : int, optional
        Expected number of sources (checked against the weights).
    trust_checkpoint : bool
        Unpickle any object in the file (runs its code; trusted files only).
    name : str, optional
        Model card title (default: the folder's name).

    Returns
    -------
    Path
        ``out_dir``.
    """
    src, out = Path(checkpoint), Path(out_dir)
    obj = load_checkpoint(src, trust=trust_checkpoint)
    state, fmt, config = unwrap(obj, src.name)
    family = model or detect_family(state, config, src.name)
    if family not in FAMILIES:
        raise UserError(f"--model must be one of {sorted(FAMILIES)}, not {family!r}.")
    read = spmamba_config if family == "spmamba" else sepmamba_config
    state, args, notes = read(state, config, src.name)
    if num_spks is not None and int(num_spks) != args["num_spks"]:
        raise UserError(
            f"{src.name} has {args['num_spks']} output sources, not "
            f"--num-spks {num_spks}; nothing written."
        )
    rate, notes["sample_rate"] = _sample_rate(family, args, config, sample_rate, src.name)
    cls = FAMILIES[family]
    net = build_separator(cls, args)
    check_state_keys(net, state, src.name)
    args = net.get_model_args()
    weights = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    digest = sha256(src)
    config = modelfolder.ModelConfig(
        cls,
        args,
        rate,
        args["num_spks"],
        origin=f"{src.name} (sha256 {digest}), by sb-mamba convert",
    )
    config.check(f"{src.name} (sample rate from {notes['sample_rate']})")
    card = model_card(
        name or out.resolve().name,
        cls,
        sum(p.numel() for p in net.parameters()),
        rate,
        args["num_spks"],
        "Results: see the original authors' paper and repository.",
        f"converted from `{src.name}` ({fmt})",
        False,
        "other",
        notes=_card_notes(src.name, digest, fmt, family, args, rate, notes),
        train_yaml=False,
        license_text=(
            f"Code: Apache-2.0 (sb_mamba). Weights: trained by the authors of "
            f"{SOURCES[cls]}, converted without change; the file states no licence, so "
            "check the licence with the original authors before you share or use "
            "them. The weights derive from the training data; check its license too "
            "(e.g. WSJ0 needs an LDC license)."
        ),
    )
    modelfolder.write_folder(out, config, weights, card=card, sources=[src])
    logger.info("Converted %s (%s, %s) to %s.", src, cls.rsplit(".", 1)[-1], fmt, out)
    return out


def _card_notes(src_name, digest, fmt, family, args, rate, notes):
    """The model card's Conversion section."""
    rows = [f"| `{k}` | `{v}` | {notes.get(k, 'tensor shapes')} |" for k, v in args.items()]
    rows.append(f"| sample rate | `{rate}` | {notes['sample_rate']} |")
    odd = (
        "\nThe official SepMamba returns T - 1 samples for an odd input length T; "
        "this model returns T (the two agree on even lengths).\n"
        if family == "sepmamba"
        else ""
    )
    return "\n".join(
        [
            "## Conversion",
            "",
            f"Converted with `sb-mamba convert` from `{src_name}` ({fmt}),",
            f"SHA-256 `{digest}`. Detected configuration:",
            "",
            "| argument | value | from |",
            "|---|---|---|",
            *rows,
            odd,
        ]
    )


def add_arguments(p):
    """The arguments of ``sb-mamba convert``."""
    p.add_argument("checkpoint", help="official .ckpt / best_model.pth / state_dict file")
    p.add_argument("out_dir", help="model folder to write (hub layout)")
    p.add_argument(
        "--model", choices=sorted(FAMILIES), help="model family (default: detected from the keys)"
    )
    p.add_argument(
        "--sample-rate", type=int, help="the model's rate in Hz, where the file does not say it"
    )
    p.add_argument("--num-spks", type=int, help="expected number of sources (checked)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle any object in the file (runs its code: trusted files only)",
    )
    p.add_argument("--name", help="model card title (default: OUT_DIR's name)")


def run(args):
    """``sb-mamba convert CHECKPOINT OUT_DIR [--model ...] [--sample-rate N]``."""
    convert(
        args.checkpoint,
        args.out_dir,
        model=args.model,
        sample_rate=args.sample_rate,
        num_spks=args.num_spks,
        trust_checkpoint=args.trust_checkpoint,
        name=args.name,
    )
    return 0
