"""Unit tests of the SepMamba separator and its YAML fragments.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

from sb_mamba.lobes.sepmamba import SepMamba, causal_lookahead
from tests.helpers import load_fragment

SMALL = dict(dim=16, num_blocks=1, d_state=4)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, target, blocks_fwd, bidirectional",
    [
        ("sepmamba_s", 7.25e6, 4, True),
        ("sepmamba_m", 22.25e6, 3, True),
        ("sepmamba_causal_s", 7.25e6, 8, False),
        ("sepmamba_causal_m", 22.25e6, 6, False),
    ],
)
def test_fragment_param_count(name, target, blocks_fwd, bidirectional):
    hp = load_fragment(f"{name}.yaml")
    model = hp["separator"]
    assert isinstance(model, SepMamba)
    assert hp["sample_rate"] == 8000 and hp["num_spks"] == 2
    assert "ssm_backend" not in hp and "ssm_backend" not in model.get_model_args()
    assert abs(n_params(model) - target) / target < 0.03
    layer = model.down[0].mamba
    assert len(layer.forward_blocks) == blocks_fwd
    assert (layer.backward_blocks is not None) == bidirectional
    assert model.lookahead == (None if bidirectional else 105)


def test_fragment_overrides():
    hp = load_fragment("sepmamba_causal_s.yaml", {"num_spks": 3, "dim": 8, "num_blocks": 1})
    model = hp["separator"]
    assert model.decoder.out_channels == 3 and model.down[0].conv.out_channels == 8
    assert len(model.up[-1].mamba.forward_blocks) == 2


def test_causal_and_bidirectional_param_counts_match():
    assert n_params(SepMamba(**SMALL)) == n_params(SepMamba(causal=True, **SMALL))


@pytest.mark.parametrize("T", [7999, 8000, 32000])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(T, batch):
    torch.manual_seed(0)
    model = SepMamba(num_spks=3, **SMALL).eval()
    with torch.no_grad():
        est = model(torch.randn(batch, T))
    assert est.shape == (batch, T, 3)
    assert torch.isfinite(est).all()


@pytest.mark.parametrize("T", [1, 15, 105, 106, 107])
def test_short_inputs(T):
    model = SepMamba(**SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(2, T)).shape == (2, T, 2)


def test_no_padding_at_4s():
    model = SepMamba(**SMALL)
    assert model.padded_length(32000) == 32000 and model.min_length == 106


def test_wrong_rank_raises():
    model = SepMamba(**SMALL)
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(torch.randn(2, 1, 800))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(torch.randn(800))


def test_lookahead_value():
    assert causal_lookahead(16, 2, 3) == 105  # 13.1 ms at 8 kHz
    assert SepMamba(causal=True, **SMALL).lookahead == 105
    assert SepMamba(**SMALL).lookahead is None


@pytest.fixture(scope="module")
def causal_run():
    torch.manual_seed(0)
    model = SepMamba(causal=True, **SMALL).eval()
    x = torch.randn(2, 600)
    with torch.no_grad():
        y = model(x)
    return model, x, y


@pytest.mark.parametrize("t", [296, 299, 303])
def test_causal_future_beyond_lookahead_is_invisible(causal_run, t):
    """Changing samples after t + lookahead leaves outputs <= t unchanged."""
    model, x, y = causal_run
    start = t + model.lookahead + 1
    x_late = x.clone()
    x_late[:, start:] = torch.randn(2, x.shape[1] - start)
    with torch.no_grad():
        y_late = model(x_late)
    torch.testing.assert_close(y_late[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
    assert (y_late[:, t + 1 :] - y[:, t + 1 :]).abs().max() > 1e-4


def test_causal_lookahead_is_tight(causal_run):
    """Over one period of 8 outputs the last input sample with a non-zero
    gradient is t + 105 - t % 8: the bound is reached at t % 8 == 0."""
    model, x, _ = causal_run
    x = x[:1].clone().requires_grad_(True)
    y = model(x)
    for t in range(296, 304):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        last = g[0].nonzero().max().item()
        assert last - t == model.lookahead - t % 8


def test_lookahead_formula_other_layout():
    """The closed form matches input gradients for K=5, S=3, 2 levels."""
    torch.manual_seed(0)
    cfg = dict(kernel_size=5, stride=3, num_levels=2, causal=True)
    model = SepMamba(**cfg, **SMALL).eval()
    x = torch.randn(1, 400, requires_grad=True)
    y = model(x)
    seen = []
    for t in range(180, 189):  # one period (S**L = 9)
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        seen.append(g[0].nonzero().max().item() - t)
    assert max(seen) == model.lookahead == causal_lookahead(5, 3, 2)


def test_bidirectional_sees_the_future():
    torch.manual_seed(0)
    model = SepMamba(**SMALL).eval()
    x = torch.randn(1, 600)
    x_late = x.clone()
    x_late[:, 400:] += 1.0
    with torch.no_grad():
        diff = (model(x_late)[:, :100] - model(x)[:, :100]).abs().max()
    assert diff > 1e-6  # exactly 0 for a causal model


def test_mapping_output_keeps_the_official_layout():
    keys = set(SepMamba(dim=8, num_blocks=1, d_state=4).state_dict())
    assert not any(k.startswith("mask_head") for k in keys)
    assert SepMamba(dim=8, num_blocks=1, d_state=4).decoder.weight.shape == (8, 2, 16)


def test_mask_output_shape_and_args_round_trip():
    torch.manual_seed(0)
    model = SepMamba(num_spks=3, dim=8, num_blocks=1, d_state=4, stride=4, output="mask")
    assert model.decoder.weight.shape == (8, 1, 16)  # one decoder shared by the sources
    assert model.mask_head.weight.shape == (3 * 8, 8, 1)
    assert model(torch.randn(2, 1001)).shape == (2, 1001, 3)
    again = SepMamba(**model.get_model_args())
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 800)
    assert torch.equal(again(x), model(x))


def test_mask_output_masks_the_encoder_features():
    """A mask of 1 on every feature gives decoder(encoder(mix)); a mask of 0 the bias."""
    torch.manual_seed(0)
    model = SepMamba(dim=8, num_blocks=1, d_state=4, stride=4, output="mask").eval()
    with torch.no_grad():
        model.mask_head.weight.zero_()
        model.mask_head.bias.copy_(torch.tensor([1.0] * 8 + [0.0] * 8))  # source 1: all 1
        mix = torch.randn(2, 1000)
        est = model(mix)
        stage = model.down[0]
        padded = torch.nn.functional.pad(mix, (0, model.padded_length(1000) - 1000))
        direct = model.decoder(stage.act(stage.conv(padded[:, None])))[:, 0, :1000]
    torch.testing.assert_close(est[..., 0], direct)
    torch.testing.assert_close(est[..., 1], model.decoder.bias.expand(2, 1000))


def test_unknown_output_mode_raises():
    with pytest.raises(ValueError, match="output must be"):
        SepMamba(dim=8, num_blocks=1, output="masks")
