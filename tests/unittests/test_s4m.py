"""Unit tests for the S4M separator and its YAML fragments.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

import sb_mamba.lobes.s4m as s4m_module
from sb_mamba.lobes.s4m import S4M
from sb_mamba.nnet.s4 import S4
from tests.helpers import load_fragment

SMALL = {"in_channels": 32, "out_channels": 16, "num_blocks": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name, target, exact",
    [("s4m_tiny.yaml", 1.8e6, 1_824_359), ("s4m.yaml", 3.6e6, 3_529_319)],
)
def test_fragment_param_count(name, target, exact):
    hp = load_fragment(name)
    assert hp["sample_rate"] == 8000 and hp["num_spks"] == 2
    n = n_params(hp["separator"])
    assert abs(n - target) / target < 0.03
    assert n == exact


def test_released_default_param_count():
    # JusperLee/S4M defaults (21 ms, 16 kHz): 2,169,143 released, minus the
    # 4,608 parameters of the never-used coarsest fusion layer.
    assert n_params(S4M(sample_rate=16000, enc_kernel_ms=21)) == 2_169_143 - 4_608


def test_fragment_overrides():
    hp = load_fragment("s4m.yaml", {"num_spks": 3, **SMALL})
    model = hp["separator"]
    assert model.num_spks == 3 and model.num_blocks == 2
    assert len(model.block.td_s4) == 3
    assert model(torch.randn(1, 800)).shape == (1, 800, 3)


@pytest.mark.parametrize("T", [7999, 8000, 32000])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(T, batch):
    torch.manual_seed(0)
    model = S4M(num_spks=3, decoder_s4=T == 7999, **SMALL).eval()
    with torch.no_grad():
        est = model(torch.randn(batch, T))
    assert est.shape == (batch, T, 3)
    assert torch.isfinite(est).all()


def test_short_and_odd_lengths():
    model = S4M(**SMALL, upsampling_depth=3).eval()
    with torch.no_grad():
        for T in (1, 13, 101):
            assert model(torch.randn(2, T)).shape == (2, T, 2)


def test_full_size_tiny_forward():
    model = load_fragment("s4m_tiny.yaml")["separator"].eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1600)).shape == (1, 1600, 2)


def test_shared_weights():
    n = {k: n_params(S4M(**{**SMALL, "num_blocks": k})) for k in (1, 2, 16)}
    assert n[1] == n[2] == n[16]


def test_all_parameters_get_gradients():
    model = S4M(decoder_s4=True, **SMALL)
    model(torch.randn(2, 900)).pow(2).sum().backward()
    unused = [k for k, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_kernel_cache_keeps_gradients(monkeypatch):
    """Reusing the S4 kernels across iterations changes neither output nor gradients."""
    torch.manual_seed(0)
    model, x = S4M(decoder_s4=True, **{**SMALL, "num_blocks": 3}), torch.randn(2, 900)
    computed = []
    ssm_kernel = S4.ssm_kernel
    monkeypatch.setattr(
        S4, "ssm_kernel", lambda self, *a, **k: computed.append(1) or ssm_kernel(self, *a, **k)
    )

    def run():
        computed.clear()
        model.zero_grad()
        y = model(x)
        y.pow(2).sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    y1, g1 = run()
    # one kernel per S4 layer (coarsest scale + 3 top-down steps), not per iteration
    assert len(computed) == 4
    forward = s4m_module._ResidualBlock.forward  # no cache: each call computes its kernel
    monkeypatch.setattr(
        s4m_module._ResidualBlock, "forward", lambda self, x, kernels=None: forward(self, x)
    )
    y0, g0 = run()
    assert len(computed) == 4 * 3
    assert torch.allclose(y1, y0, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g0))


def test_batch_items_independent():
    model = S4M(**SMALL).eval()
    x = torch.randn(2, 1200)
    with torch.no_grad():
        assert torch.allclose(model(x)[1:], model(x[1:]), atol=1e-5)


@pytest.mark.parametrize("shape", [(800,), (1, 1, 800), (1, 800, 2)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        S4M(**SMALL)(torch.randn(*shape))
