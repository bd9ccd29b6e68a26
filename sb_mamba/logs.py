"""The one logging set-up of sb_mamba's command-line tools.

``sb_mamba.cli.main`` calls :func:`setup_cli_logging` around every subcommand (recipes log
through SpeechBrain's own set-up, which ``speechbrain.core`` makes): messages,
warnings and errors go to stderr through ``tqdm.write``, so progress bars stay
intact, as ``LEVEL message`` lines.

Authors
-------
 * sb_mamba developers
"""

import logging
import sys

from tqdm import tqdm

# loggers whose INFO messages are always shown (the rest only with verbose)
ALWAYS_INFO = ("sb_mamba.cli", "sb_mamba.nnet._cpu_kernel")


class TqdmHandler(logging.Handler):
    """Log records written with ``tqdm.write`` (keeps a progress bar intact)."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def setup_cli_logging(verbose=True, always=ALWAYS_INFO):
    """Route sb_mamba's and SpeechBrain's log records through tqdm, to stderr.

    Arguments
    ---------
    verbose : bool
        Show sb_mamba's INFO messages (else only those of ``always``, and
        warnings and errors). SpeechBrain's INFO messages stay hidden.
    always : tuple of str
        Loggers whose INFO messages are shown even when not ``verbose``.

    Returns
    -------
    callable
        Restores the previous set-up.

    Example
    -------
    >>> restore = setup_cli_logging(verbose=False)
    >>> logging.getLogger("sb_mamba").level == logging.INFO
    True
    >>> restore()
    """
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(lambda r: verbose or r.levelno >= logging.WARNING or r.name in always)
    saved = []
    for name, level in (("sb_mamba", logging.INFO), ("speechbrain", logging.WARNING)):
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False

    def restore():
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate

    return restore
