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
