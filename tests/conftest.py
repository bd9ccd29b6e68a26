"""Fixtures shared by all the tests.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: faster for tiny models on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
