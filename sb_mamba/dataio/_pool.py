"""A process pool with a progress bar, for the dataset writers.

Authors
-------
 * sb_mamba developers
"""

import multiprocessing

from tqdm import tqdm

from sb_mamba.errors import UserError


def pool_map(fn, jobs, num_workers, desc, unit, initializer=None, initargs=()):
    """``[fn(job) for job in jobs]`` in ``num_workers`` processes, in order, with tqdm.

    ``initializer(*initargs)`` runs once per process (in this one when
    ``num_workers`` is 1).

    Example
    -------
    >>> pool_map(abs, [-1, -2, 3], 2, "abs", "x")
    [1, 2, 3]
    """
    if num_workers < 1:
        raise UserError(f"num_workers (--workers) must be >= 1; got {num_workers}.")
    bar = dict(total=len(jobs), desc=desc, unit=unit, dynamic_ncols=True)
    if num_workers == 1 or len(jobs) < 2:
        if initializer is not None:
            initializer(*initargs)
        return [fn(job) for job in tqdm(jobs, **bar)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(min(num_workers, len(jobs)), initializer, initargs) as pool:
        return list(tqdm(pool.imap(fn, jobs), **bar))
