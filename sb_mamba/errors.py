"""The one error policy of sb_mamba's commands.

A :class:`UserError` is a problem with what the user gave (a missing file, a
bad argument, a dataset folder in the wrong layout, a misspelt YAML key): its
message names the problem and the fix, and every command (``sb-mamba ...``,
a recipe's ``train.py``) prints it as one line, without a traceback, and
exits with status 2 (:data:`USER_ERROR`). Any other exception is a bug and
keeps its traceback.

Authors
-------
 * sb_mamba developers
"""

import os

USER_ERROR = 2  # exit status of every command on a user error


class UserError(ValueError):
    """A problem with the user's input, with a message that names the fix.

    A ``ValueError``, so callers that catch ``ValueError`` keep working.

    Example
    -------
    >>> isinstance(UserError("no such folder"), ValueError)
    True
    """


def user_message(exc):
    """The one-line message a command prints for a user error, or None.

    ``UserError`` and ``FileNotFoundError`` (a missing input) are user
    errors; anything else is not.

    Arguments
    ---------
    exc : BaseException

    Returns
    -------
    str or None

    Example
    -------
    >>> user_message(FileNotFoundError(2, "No such file or directory", "a.wav"))
    "No such file or directory: 'a.wav'"
    >>> user_message(UserError("bad key\\nsecond line"))
    'bad key second line'
    >>> user_message(KeyError("x")) is None
    True
    """
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename!r}"
    elif isinstance(exc, (UserError, FileNotFoundError)):
        text = str(exc)
    else:
        return None
    return " ".join(text.split())


def run_with_policy(fn, report):
    """Call ``fn()`` under the error policy: a user error is reported in one line.

    Arguments
    ---------
    fn : callable
        The command; its return value is returned.
    report : callable
        ``report(exc, message)`` prints or logs the one-line message of a
        user error (:func:`user_message`).

    Returns
    -------
    object
        ``fn()``'s value, or :data:`USER_ERROR` after a user error. Any
        other exception propagates with its traceback, and so does a user
        error when ``SB_MAMBA_TRACEBACK=1``.

    Example
    -------
    >>> def bad():
    ...     raise UserError("no such folder: give --data_folder")
    >>> run_with_policy(bad, lambda e, m: print("error:", m))
    error: no such folder: give --data_folder
    2
    """
    try:
        return fn()
    except Exception as e:
        message = user_message(e)
        if message is None or os.environ.get("SB_MAMBA_TRACEBACK") == "1":
            raise
        report(e, message)
        return USER_ERROR
