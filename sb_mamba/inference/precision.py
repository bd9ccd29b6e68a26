"""Inference precision: which ones a machine supports, and applying one to a model.

The one owner of the ``precision`` run option at inference
(``MambaSeparator.from_hparams(..., run_opts={"precision": ...})``,
``sb-mamba separate|stream --precision``):

* ``fp32`` (default): the model as trained;
* ``int8`` (CPU): every Mamba mixer's ``in_proj`` and ``out_proj``, most of a
  Mamba separator's multiply-adds, run as int8 products
  (:meth:`~sb_mamba.nnet.mamba.Mamba.pack_int8`: weights quantized per output
  channel once, inputs per call); the convolutions, ``x_proj``, the step
  sizes, the scan and its state stay float32. Each call's input is quantized
  by its own range, so a stream (``stream()``) or a chunked pass is not
  bit-equal to one int8 pass, only as close to fp32 as that pass (about 1 %);
* ``bf16`` / ``fp16``: SpeechBrain's autocast (``inference_ctx``), where the
  device computes them natively (a GPU; for bf16 also a CPU with AVX512-BF16
  or AMX, or an ARM CPU with BF16): elsewhere they are emulated and slower
  than fp32 (bf16 on this project's AVX2 CPU: about 10x slower products), so
  they are refused with the reason and what to use instead.

Training precision stays SpeechBrain's (``--precision`` of a recipe).

Authors
-------
 * sb_mamba developers
"""

import platform

from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError
from sb_mamba.nnet.int8 import int8_engine

logger = get_logger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_cpu_bf16():
    """Whether this CPU computes bf16 products natively.

    Returns
    -------
    bool or None
        True with AVX512-BF16 / AMX-BF16 (x86) or BF16 (ARM); False without;
        None where the CPU's features cannot be read (not Linux).

    Example
    -------
    >>> native_cpu_bf16() in (True, False, None)
    True
    """
    flags = _cpu_flags()
    if not flags:
        return True if platform.machine() == "arm64" and platform.system() == "Darwin" else None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def check_precision(precision, device="cpu"):
    """Return ``precision`` if ``device`` supports it, else raise :class:`UserError`.

    Arguments
    ---------
    precision : str
        One of :data:`PRECISIONS`.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Returns
    -------
    str

    Example
    -------
    >>> check_precision("fp32", "cpu")
    'fp32'
    >>> check_precision("int8", "cuda")
    Traceback (most recent call last):
    ...
    sb_mamba.errors.UserError: precision int8 runs on the CPU (PyTorch's int8 products): \
on cuda use bf16 or fp16, or run on --device cpu.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    kind = str(device).split(":")[0]
    if precision == "int8":
        if kind != "cpu":
            raise UserError(
                f"precision int8 runs on the CPU (PyTorch's int8 products): on {device} "
                "use bf16 or fp16, or run on --device cpu."
            )
        if int8_engine() is None:
            raise UserError(
                "precision int8: this PyTorch build has no int8 CPU engine (fbgemm or "
                "qnnpack); use fp32."
            )
    elif kind == "cpu" and precision == "fp16":
        raise UserError(
            "precision fp16 is for GPUs: a CPU emulates it, slower than fp32; on the CPU "
            "use fp32, or int8 (a small loss; faster on CPUs with VNNI)."
        )
    elif kind == "cpu" and precision == "bf16" and native_cpu_bf16() is False:
        raise UserError(
            "precision bf16: this CPU has no native bf16 products (AVX512-BF16, AMX or "
            "ARM BF16), so bf16 would run about 10x slower than fp32 here; use fp32, "
            "or int8 (a small loss; faster on CPUs with VNNI)."
        )
    return precision


def apply_precision(model, precision):
    """Set an inference precision on a model's layers (int8: pack the Mamba projections).

    ``fp32``, ``bf16`` and ``fp16`` change nothing here (the last two are an
    autocast context around the forward pass, which the caller enters).

    Arguments
    ---------
    model : torch.nn.Module
        A separator (any module holding :class:`~sb_mamba.nnet.mamba.Mamba`
        mixers), loaded with its weights.
    precision : str
        One of :data:`PRECISIONS`.

    Returns
    -------
    int
        The number of Mamba mixers packed.

    Example
    -------
    >>> from sb_mamba.lobes.sepmamba import SepMamba
    >>> net = SepMamba(num_spks=2, dim=8, num_blocks=1, d_state=4).eval()
    >>> apply_precision(net, "int8")
    10
    """
    from sb_mamba.nnet.mamba import Mamba

    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if precision != "int8":
        return 0
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    if not mixers:
        logger.warning("precision int8: this model has no Mamba mixers; it runs in fp32.")
        return 0
    for m in mixers:
        m.pack_int8()
    logger.info(
        "precision int8: the projections of %d Mamba mixers run in int8 (scan and state fp32).",
        len(mixers),
    )
    return len(mixers)
