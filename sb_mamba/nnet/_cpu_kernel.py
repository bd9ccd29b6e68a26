"""Just-in-time loader for the fused C++ CPU kernels.

The kernels (``csrc/*.cpp``: the selective scan, and the fused inner path of
a Mamba mixer used by :mod:`sb_mamba.nnet.fused`) are compiled on first use with
:func:`torch.utils.cpp_extension.load`, once per environment: the build
folder (:func:`build_folder`) is
``<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions>/sb_mamba/<name>-torch<version>-env<hash>-src<hash>``,
keyed by the torch build, the Python environment (``sys.prefix``) and a hash
of the kernel sources (their paths and contents) and flags, so two environments or source trees on one machine (two
clones, a venv and CI) never rebuild over each other or wait on each other's
lock, and an edited source gets a fresh folder. An INFO message says so
before the compilation (a minute or two) starts. Processes of one
environment take turns with a lock that the system releases when its holder
dies, so a compilation killed halfway never wedges the next run (torch's own
lock file, which would, is removed). When the compilation is impossible (no
C++ compiler, no ninja, ...) the loader warns once and returns ``None`` so
that callers fall back to the pure PyTorch scan. Setting the environment
variable ``SB_MAMBA_NO_CPU_KERNEL=1`` disables it.

Authors
-------
 * sb_mamba developers
"""

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import threading

from speechbrain.utils.logger import get_logger

# torch.utils.cpp_extension warns "No CUDA runtime is found" when imported on a
# CPU-only machine: true, and irrelevant to a CPU kernel, so it is dropped
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: "No CUDA runtime is found" not in record.getMessage()
)

logger = get_logger(__name__)

_EXT_NAME = "sb_mamba_cpu_kernel"  # the module's name (the folder holds the versions)
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


def source_hash(paths, flags=()):
    """A hash of the kernel sources (paths and contents) and compiler flags.

    The paths count: torch's own build versioning follows them, so two
    source trees used from one environment (a clone and a wheel, two
    worktrees) would otherwise rebuild one build folder over each other.

    Arguments
    ---------
    paths : list of str
        The source and header files.
    flags : iterable of str
        The compiler and linker flags.

    Returns
    -------
    str
        64 hex digits.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.abspath(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    digest.update("\0".join(flags).encode())
    return digest.hexdigest()


def build_folder(root, torch_build, prefix, sources_hash):
    """The build folder of the kernel for one environment (a pure function).

    Arguments
    ---------
    root : str
        The extensions root (``TORCH_EXTENSIONS_DIR`` or torch's default).
    torch_build : str
        The torch build (version, commit, Python ABI; :func:`_torch_build`).
    prefix : str
        The Python environment (``sys.prefix``).
    sources_hash : str
        :func:`source_hash` of the sources and flags.

    Returns
    -------
    str
        ``<root>/sb_mamba/<name>-torch<version>-env<hash>-src<hash>``.

    Example
    -------
    >>> build_folder("/x", "2.5.1+cpu@abc/cpython-311", "/venv", "f" * 64)
    '/x/sb_mamba/sb_mamba_cpu_kernel-torch2.5.1_cpu-env7f3ee59f1b-srcffffffffffff'
    """
    version = re.sub(r"[^\w.]+", "_", torch_build.split("@")[0])
    env = hashlib.sha256(f"{torch_build}\0{prefix}".encode()).hexdigest()[:10]
    return os.path.join(
        root, "sb_mamba", f"{_EXT_NAME}-torch{version}-env{env}-src{sources_hash[:12]}"
    )


def _torch_build():
    """``<torch version>@<torch commit>/<Python ABI tag>``: what the binary depends on."""
    import torch

    commit = (getattr(torch.version, "git_version", None) or "")[:12]
    return f"{torch.__version__}@{commit}/{sys.implementation.cache_tag}"


def _extensions_root():
    """``TORCH_EXTENSIONS_DIR`` if set, else torch's default root (per user)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return root
    try:
        from torch.utils.cpp_extension import get_default_build_root

        return get_default_build_root()
    except ImportError:  # an older torch
        return os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")


def _build_directory():
    """The build folder of this environment (see :func:`build_folder`)."""
    return build_folder(
        _extensions_root(),
        _torch_build(),
        sys.prefix,
        source_hash(_SOURCES + _HEADERS, _CFLAGS + _LDFLAGS),
    )


def _torch_lock_is_a_file():
    """Whether torch's build lock blocks by the existence of its file (FileBaton)."""
    from torch.utils import cpp_extension

    return hasattr(cpp_extension, "FileBaton")


@contextlib.contextmanager
def _build_lock(folder):
    """Hold ``folder``'s lock (released by the system if this process dies).

    While it is held no other process of this environment builds, so with
    a torch whose lock is a file that blocks by existing (older torch:
    ``FileBaton``), such a ``lock`` file found then was left by a killed
    build: it is removed (torch would wait on it forever). Newer torch
    locks with the system too, and its lock file stays.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock only
        yield
        return
    with open(os.path.join(folder, "sb_mamba.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(
                "Waiting for another process that compiles the sb_mamba CPU kernel in %s.", folder
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            baton = os.path.join(folder, "lock")
            if _torch_lock_is_a_file() and os.path.exists(baton):
                os.remove(baton)
                logger.warning("Removed %s, left by a compilation that was killed.", baton)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_ninja_on_path():
    """Put the ``ninja`` pip package's binary first on ``PATH`` when installed.

    torch runs ``ninja`` through ``PATH``. Every process of one environment
    must run the same ninja on the shared build folder: two versions (the
    pip package's in an activated environment, the system's in one that is
    not) rewrite each other's build log ("build log version is too old;
    starting over") and so recompile the kernel at every load. The pip
    package's binary, when installed, belongs to the environment and wins;
    otherwise the first ``ninja`` on ``PATH`` is used.
    """
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and os.path.isdir(bin_dir):
        found = shutil.which("ninja")
        if found is None or os.path.dirname(os.path.abspath(found)) != os.path.abspath(bin_dir):
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
    """Compile (or load from this environment's build folder) the extension.

    Returns
    -------
    module
        The extension module (``scan_fwd``, ``scan_bwd``, ``conv_silu_fwd``,
        ``conv_silu_bwd``, ``mamba_scan_fwd``, ``mamba_scan_bwd``).
    """
    from torch.utils.cpp_extension import load

    _ensure_ninja_on_path()
    build_dir = _build_directory()
    os.makedirs(build_dir, exist_ok=True)
    library = os.path.join(build_dir, _EXT_NAME + ".so")
    with _build_lock(build_dir):
        cached = os.path.exists(library) and os.path.getmtime(library) >= max(
            os.path.getmtime(f) for f in _SOURCES + _HEADERS
        )
        if cached:
            logger.debug("Loading the sb_mamba CPU kernel from %s.", build_dir)
        else:
            logger.info(
                "Compiling the sb_mamba CPU kernel: once for this environment, it takes a "
                "minute or two; later runs load it from %s.",
                build_dir,
            )
        return load(
            name=_EXT_NAME,
            sources=_SOURCES,
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=build_dir,
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
            logger.info("SB_MAMBA_NO_CPU_KERNEL is set: using the pure PyTorch CPU scan")
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
