"""Files that dataio writes and reads back: options memos and CSV tables.

A step that writes files and may be run again (data preparation, a RIR
bank, fixed mixtures) stores its options in a JSON file written last:
:func:`same_options` then says whether the outputs are complete and were
made with the same options (the step is skipped), :func:`forget_options`
removes the memo before the outputs are rewritten, so an interrupted run
never looks complete, and :func:`store_options` marks the end.

Authors
-------
 * sb_mamba developers
"""

import csv
import json
import os
from pathlib import Path


def _replace(path, write, suffix):
    """Write ``path`` through ``write(file)`` on a temporary name, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)


def same_options(path, options, outputs=()):
    """True if ``path`` holds ``options`` and every file of ``outputs`` exists.

    Arguments
    ---------
    path : str or Path
        The JSON memo written by :func:`store_options`.
    options : dict
        JSON-serialisable options (tuples compare equal to lists).
    outputs : iterable of str or Path
        Files the step writes.

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile
    >>> memo = tempfile.mkdtemp() + "/options.json"
    >>> same_options(memo, {"n": 1})
    False
    >>> store_options(memo, {"n": 1, "range": (0, 1)})
    >>> same_options(memo, {"n": 1, "range": [0, 1]}), same_options(memo, {"n": 2})
    (True, False)
    """
    path = Path(path)
    if not path.is_file() or not all(Path(p).is_file() for p in outputs):
        return False
    try:
        stored = json.loads(path.read_text())
    except ValueError:  # a damaged memo: the step runs again
        return False
    return stored == json.loads(json.dumps(options))


def store_options(path, options):
    """Write ``options`` to the JSON memo ``path`` (atomically; do this last).

    Example
    -------
    >>> import tempfile
    >>> memo = tempfile.mkdtemp() + "/options.json"
    >>> store_options(memo, {"seed": 1})
    >>> open(memo).read()
    '{\\n "seed": 1\\n}'
    """
    _replace(path, lambda f: f.write(json.dumps(options, indent=1)), ".json")


def forget_options(path):
    """Remove the memo ``path`` (before rewriting the outputs it vouches for).

    Example
    -------
    >>> import tempfile
    >>> memo = tempfile.mkdtemp() + "/options.json"
    >>> store_options(memo, {}); forget_options(memo); same_options(memo, {})
    False
    """
    Path(path).unlink(missing_ok=True)


def write_csv(path, rows, columns):
    """Write ``rows`` (dicts) as a CSV with ``columns``, atomically.

    Missing values are written empty; keys not in ``columns`` are left out.

    Arguments
    ---------
    path : str or Path
        The CSV file (its folder is created).
    rows : list of dict
        One dict per row.
    columns : list of str
        Header, in order.

    Example
    -------
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/t.csv"
    >>> write_csv(path, [{"ID": "a", "x": 1, "extra": 0}, {"ID": "b"}], ["ID", "x"])
    >>> open(path).read().splitlines()
    ['ID,x', 'a,1', 'b,']
    """

    def write(f):
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    _replace(path, write, ".csv")
