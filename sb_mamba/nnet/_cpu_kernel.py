"""Just-in-time loader for the fused C++ CPU kernels.

The kernels (``csrc/*.cpp``: the selective scan, and the fused inner path of
a Mamba mixer used by :mod:`sb_mamba.nnet.fused`) are compiled on first use with
:func:`torch.utils.cpp_extension.load` and cached on disk by torch (under
``TORCH_EXTENSIONS_DIR`` when set, else torch's per-user cache folder), so
only the first process on a machine pays the compilation (~30 s). When the
compilation is impossible (no C++ compiler, no ninja, ...) the loader warns
once and returns ``None`` so that callers fall back to the pure PyTorch scan.
Setting the environment variable ``SB_MAMBA_NO_CPU_KERNEL=1`` disables it.

Authors
-------
 * sb_mamba developers
"""

import os
import shutil
import threading

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

# Bump the version whenever a source changes: checkouts share torch's cache.
_EXT_NAME = "sb_mamba_scan_cpu_v7"
_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = [
    os.path.join(_CSRC, name)
    for name in (
        "bindings.cpp",
        "selective_scan_cpu.cpp",
        "mamba_conv.cpp",
        "mamba_scan_fwd.cpp",
        "mamba_scan_bwd.cpp",
    )
]
_HEADERS = [os.path.join(_CSRC, n) for n in ("kernels.h", "mamba_scan.h", "sb_math.h")]
# -O3 and OpenMP; FP contraction lets the AVX2/AVX-512 code paths use FMA;
# -fno-trapping-math lets GCC if-convert (vectorise) the branch-free exp
# (results, NaN and inf handling are unchanged: it only drops the assumption
# that FP exceptions may trap). No -march=native (the kernel dispatches on
# the CPU at run time) and no -ffast-math (NaNs must propagate).
_CFLAGS = [
    "-O3",
    "-fopenmp",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-fno-trapping-math",
]
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state = {"tried": False, "module": None}


def _build_directory():
    """Return the folder torch compiles the extension into, or ``None``.

    Returns
    -------
    str or None
        The build folder (it holds the cached shared library), or ``None``
        if it cannot be determined with this torch version.
    """
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return _get_build_directory(_EXT_NAME, verbose=False)
    except Exception:  # private torch helper: tolerate its absence
        return None


def _ensure_ninja_on_path():
    """Put the ``ninja`` pip package's binary on ``PATH`` if needed.

    torch runs ``ninja`` through ``PATH``; a ``pip install ninja`` inside a
    virtual environment that is not activated is otherwise not found.
    """
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and os.path.isdir(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _failure_reason(exc):
    """Condense a build exception into one informative line.

    torch's build errors start with the (long) compiler command line; the
    useful part is the compiler's or the shell's own error message.

    Arguments
    ---------
    exc : Exception
        The exception raised while compiling or importing the extension.

    Returns
    -------
    str
        ``"<ExceptionType>: <most informative line>"``, at most ~300 chars.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if any(k in line.lower() for k in ("error", "not found", "no such"))
        and not line.startswith(("[", "FAILED:", "Error building extension"))
    ]
    text = useful[0] if useful else (lines[0] if lines else "")
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _compile():
    """Compile (or load from torch's cache) the extension.

    Returns
    -------
    module
        The extension module (``scan_fwd``, ``scan_bwd``, ``conv_silu_fwd``,
        ``conv_silu_bwd``, ``mamba_scan_fwd``, ``mamba_scan_bwd``).
    """
    from torch.utils.cpp_extension import load

    _ensure_ninja_on_path()
    build_dir = _build_directory()
    library = os.path.join(build_dir or "", _EXT_NAME + ".so")
    cached = (
        build_dir is not None
        and os.path.exists(library)
        and os.path.getmtime(library)
        >= max(os.path.getmtime(f) for f in _SOURCES + _HEADERS)
    )
    if cached:
        logger.debug("loading the sb_mamba CPU scan kernel from %s", build_dir)
    else:
        logger.info(
            "compiling the sb_mamba CPU scan kernel (once, cached in %s)",
            build_dir or "torch's extension cache",
        )
    return load(
        name=_EXT_NAME,
        sources=_SOURCES,
        extra_cflags=_CFLAGS,
        extra_ldflags=_LDFLAGS,
        verbose=False,
    )


def load_cpu_kernel():
    """Return the compiled CPU selective-scan kernel, or ``None``.

    The first call compiles the extension (or loads torch's on-disk cached
    build); the result is remembered for the rest of the process, so later
    calls are free. Thread-safe.

    Returns
    -------
    module or None
        A module exposing ``scan_fwd(u, delta, A, Bt, Ct, chunk) -> (y, ckpt)``
        and ``scan_bwd(u, delta, A, Bt, Ct, ckpt, gy, chunk) ->
        (du, ddelta, dA, dBt, dCt)`` and the fused Mamba kernels (see
        :mod:`sb_mamba.nnet.fused`); ``None`` when the kernel is disabled
        with ``SB_MAMBA_NO_CPU_KERNEL=1`` or cannot be built (a single
        warning says why), in which case callers use the PyTorch scan.
    """
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        module = None
        if os.environ.get("SB_MAMBA_NO_CPU_KERNEL", "0") not in ("", "0"):
            logger.info(
                "SB_MAMBA_NO_CPU_KERNEL is set: using the pure PyTorch CPU scan"
            )
        else:
            try:
                module = _compile()
            except Exception as exc:  # no compiler, no ninja, build error...
                logger.warning(
                    "could not build the sb_mamba CPU scan kernel (%s); falling "
                    "back to the slower pure PyTorch scan. To enable it, install "
                    "a C++ compiler (e.g. g++) and ninja (`pip install ninja`), "
                    "or set SB_MAMBA_NO_CPU_KERNEL=1 to silence this warning.",
                    _failure_reason(exc),
                )
                module = None
        _state["module"] = module
        _state["tried"] = True
        return module
