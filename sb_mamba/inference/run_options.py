"""The run options of a command that loads a model: ``--device``, ``--backend``, ``--precision``.

Shared by ``sb-mamba separate`` (:mod:`sb_mamba.cli`) and ``sb-mamba stream``
(:mod:`sb_mamba.inference.stream_cli`); what they mean is owned by
:func:`sb_mamba.nnet.mamba.set_ssm_backend` and :mod:`sb_mamba.inference.precision`.

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.errors import UserError
from sb_mamba.inference.precision import PRECISIONS
from sb_mamba.nnet.scan import BACKENDS


def add_run_options(p):
    """The run options of a command that loads a model: --device, --backend, --precision."""
    p.add_argument("-d", "--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="selective scan of the Mamba layers (default auto: the CUDA kernels on "
        "a GPU, the C++ kernel on a CPU)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32 (default); int8: the Mamba projections in int8 on the CPU (a small "
        "loss; faster on CPUs with VNNI); bf16/fp16 where the device computes them natively",
    )


def run_opts_of(args):
    """The ``run_opts`` of :class:`~sb_mamba.inference.MambaSeparator` from the parsed options."""
    return {"device": args.device, "ssm_backend": args.backend, "precision": args.precision}


def load_model(args, **kwargs):
    """The model of a command: ``args.model`` with the run options, or one clear error.

    ``kwargs`` go to :meth:`~sb_mamba.inference.MambaSeparator.from_hparams`
    (e.g. ``trust_remote_code``). A :class:`~sb_mamba.errors.UserError` passes
    as it is; any other failure (a folder, a hub id or a URL: many ways to
    fail) becomes one naming the model and what to give instead.
    """
    from sb_mamba.inference import MambaSeparator

    try:
        return MambaSeparator.from_hparams(
            source=args.model, savedir=args.savedir, run_opts=run_opts_of(args), **kwargs
        )
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"Cannot load the model {args.model}: {type(e).__name__}: {e}; give a folder "
            "written by `sb-mamba export`, a hub id or a shipped model's name."
        ) from e
