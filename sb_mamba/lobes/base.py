"""Self-describing separators: the constructor arguments a model was built with.

:class:`ModelArgsMixin` records the arguments of ``__init__`` (bound to its
signature, defaults filled in) when a separator is built, and
:meth:`~ModelArgsMixin.get_model_args` returns them as plain Python values,
so that ``type(m)(**m.get_model_args())`` builds the same architecture (as
Asteroid's ``get_model_args``): the same state_dict layout and, with the
weights loaded, the same outputs.

Authors
-------
 * sb_mamba developers
"""

import copy
import functools
import inspect

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)
_PLAIN = (bool, int, float, str, type(None))


def _as_plain(value, name):
    """``value`` as plain Python (tuples become lists), or a TypeError."""
    if isinstance(value, (list, tuple)):
        return [_as_plain(v, name) for v in value]
    for t in _PLAIN:  # bool before int: a bool stays a bool
        if isinstance(value, t):
            return value if t is type(None) else t(value)
    raise TypeError(
        f"argument {name}={value!r} is not a plain value (int, float, str, bool, "
        "list or None), so the model cannot describe itself by its arguments."
    )


class ModelArgsMixin:
    """Records the constructor arguments of each instance (see :meth:`get_model_args`).

    A class that derives from it (before ``torch.nn.Module``) has its
    ``__init__`` wrapped: once it returns, the arguments it was called with,
    bound to its signature with the defaults filled in (keyword arguments
    of a ``**kwargs`` parameter merged in), are stored on the instance. A
    subclass with its own ``__init__`` records its own arguments.

    Example
    -------
    >>> import torch
    >>> class Tiny(ModelArgsMixin, torch.nn.Module):
    ...     def __init__(self, n_in, n_out=3, sizes=(2, 2)):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(n_in, n_out)
    >>> m = Tiny(4)
    >>> m.get_model_args()
    {'n_in': 4, 'n_out': 3, 'sizes': [2, 2]}
    >>> type(m)(**m.get_model_args()).lin.weight.shape
    torch.Size([3, 4])
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__init__)

    def get_model_args(self):
        """The constructor arguments of this model, as plain Python values.

        Returns
        -------
        dict
            ``{argument: value}`` for every argument of ``__init__`` (defaults
            filled in; int, float, str, bool, list or None), such that
            ``type(self)(**self.get_model_args())`` builds the same
            architecture. A fresh copy at each call.
        """
        args = getattr(self, "_model_args", None)
        if args is None:
            raise RuntimeError(f"{type(self).__name__} recorded no constructor arguments.")
        return copy.deepcopy(args)


_warned = set()


def _deprecated_backend(model, backend):
    """Apply an ``ssm_backend`` constructor argument of an old YAML, once warned."""
    from sb_mamba.nnet.mamba import set_ssm_backend

    set_ssm_backend(model, backend)
    if "ssm_backend" not in _warned:
        _warned.add("ssm_backend")
        logger.warning(
            "ssm_backend=%r as a model argument is deprecated and is not stored with the "
            "model: it is a run option (recipes: --ssm_backend=%s; MambaSeparator."
            "from_hparams(run_opts={'ssm_backend': %r}); sb-mamba separate --backend %s); "
            "remove it from the YAML.",
            backend,
            backend,
            backend,
            backend,
        )


def _recording(init):
    """Wrap ``init`` so that it stores its bound arguments on the instance."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        backend = kwargs.pop("ssm_backend", None)  # a run option now (old YAMLs pass it)
        init(self, *args, **kwargs)
        if backend is not None:
            _deprecated_backend(self, backend)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        recorded = {}
        for name, param in list(signature.parameters.items())[1:]:
            if param.kind is param.VAR_POSITIONAL:
                if bound.arguments[name]:
                    raise TypeError(f"{type(self).__name__}: *{name} cannot be recorded.")
            elif param.kind is param.VAR_KEYWORD:
                recorded.update(bound.arguments[name])
            else:
                recorded[name] = bound.arguments[name]
        # set on the instance directly: a plain attribute, never in the state_dict
        object.__setattr__(self, "_model_args", {k: _as_plain(v, k) for k, v in recorded.items()})

    return __init__
