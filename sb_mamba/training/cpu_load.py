"""Warns when a CPU run asks for more threads than the machine has free cores.

PyTorch's intra-op threads wait for each other at the end of every parallel
operation. When another process keeps one of the cores busy, the thread that
shares that core arrives late at every such barrier, and a training step of
many small operations slows down many times over (measured on a 2-core
machine: 2.6 s a step of the LibriMini recipe with 2 threads beside one busy
process, 0.18 s with both cores free, 0.31 s with 1 thread). One thread fewer
is then much faster: the warning says so, with the number to use.

Authors
-------
 * sb_mamba developers
"""

import logging
import os
import time

logger = logging.getLogger(__name__)


def read_cpu_times(stat="/proc/stat"):
    """``(idle, total)`` jiffies of all CPUs from ``/proc/stat``; ``None`` elsewhere."""
    try:
        with open(stat) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait, everything


def busy_cores(interval=0.5, cpus=None, stat="/proc/stat"):
    """How many cores other processes keep busy, sampled over ``interval`` seconds.

    Call it while this process is idle (before training starts): it counts
    every process. Returns ``None`` where ``/proc/stat`` cannot be read.
    """
    cpus = cpus or os.cpu_count() or 1
    first = read_cpu_times(stat)
    time.sleep(interval)
    second = read_cpu_times(stat)
    if first is None or second is None or second[1] <= first[1]:
        return None
    idle = (second[0] - first[0]) / (second[1] - first[1])
    return cpus * (1.0 - idle)


def thread_advice(threads, cpus, busy):
    """The warning for ``threads`` torch threads on ``cpus`` cores, ``busy`` of them in use.

    Returns ``None`` when the threads fit in the free cores (half a core of
    slack: short bursts of other work do not count).

    Example
    -------
    >>> thread_advice(2, 2, 0.1) is None
    True
    >>> print(thread_advice(2, 2, 1.0))  # doctest: +ELLIPSIS
    PyTorch uses 2 threads, but other processes keep about 1.0 of the 2 cores busy: ... OMP_NUM_THREADS=1 ...
    """
    if busy is None or threads <= 1 or threads <= cpus - busy + 0.5:
        return None
    free = max(1, round(cpus - busy))
    return (
        f"PyTorch uses {threads} threads, but other processes keep about {busy:.1f} of the "
        f"{cpus} cores busy: threads that wait for a busy core can slow every training step "
        f"many times over. Start the run with OMP_NUM_THREADS={free} (or stop the other work) "
        "for a much faster run."
    )


def warn_if_cores_busy(threads=None, interval=0.3):
    """Log :func:`thread_advice` for this process, if there is any; returns it."""
    import torch

    threads = threads or torch.get_num_threads()
    if threads <= 1:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    advice = thread_advice(threads, cpus, busy_cores(interval, cpus))
    if advice:
        logger.warning(advice)
    return advice
