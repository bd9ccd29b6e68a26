"""Fixtures shared by all the tests.

Authors
-------
 * sb_mamba developers
"""

import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: faster for tiny models on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STANDINS = Path(__file__).parent / "standins"
# never collected (doctests would import them, and put them on sys.path for good):
# only the mamba_ssm_standin fixture brings them in, for the tests that ask
collect_ignore = ["standins"]
_STANDIN_PACKAGES = ("mamba_ssm", "causal_conv1d")


def _forget_standins():
    for name in list(sys.modules):
        if name.split(".")[0] in _STANDIN_PACKAGES:
            del sys.modules[name]


@pytest.fixture
def mamba_ssm_standin(monkeypatch):
    """The mamba-ssm / causal-conv1d stand-ins (tests/standins) first on sys.path.

    Yields their call counter (function name -> calls). sb_mamba's resolved
    backends are forgotten before and after, so nothing leaks into other tests.
    """
    from sb_mamba.nnet import scan

    _forget_standins()
    monkeypatch.syspath_prepend(str(STANDINS))
    scan.reset_backends()
    import mamba_ssm

    mamba_ssm.CALLS.clear()
    yield mamba_ssm.CALLS
    _forget_standins()
    scan.reset_backends()


@pytest.fixture
def fresh_backends():
    """Forget sb_mamba's resolved backends before and after the test."""
    from sb_mamba.nnet import scan

    scan.reset_backends()
    yield
    scan.reset_backends()
