"""SPMamba: parameter counts, shape contract, STFT round trip, errors.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

from sb_mamba.lobes.spmamba import SPMamba, stft_analysis, stft_synthesis
from tests.helpers import load_fragment

SMALL = {"emb_dim": 4, "num_layers": 1, "expand": 2}  # d_model 32: fast on CPU


@pytest.mark.parametrize(
    "name, sample_rate, expected",
    [("spmamba.yaml", 8000, 6.09e6), ("spmamba_16k.yaml", 16000, 6.14e6)],
)
def test_param_count(name, sample_rate, expected):
    hp = load_fragment(name)
    assert hp["sample_rate"] == sample_rate and hp["num_spks"] == 2
    assert "ssm_backend" not in hp and "ssm_backend" not in hp["separator"].get_model_args()
    n = sum(p.numel() for p in hp["separator"].parameters())
    assert abs(n - expected) / expected < 0.03, n


def test_state_dict_names_follow_original():
    sd = load_fragment("spmamba.yaml", SMALL)["separator"].state_dict()
    for key in (
        "conv.0.weight",
        "conv.1.weight",
        "blocks.0.intra_norm.gamma",
        "blocks.0.intra_mamba.forward_blocks.0.mixer.in_proj.weight",
        "blocks.0.intra_mamba.backward_blocks.0.norm.weight",
        "blocks.0.intra_linear.weight",
        "blocks.0.inter_mamba.forward_blocks.0.mixer.A_log",
        "blocks.0.inter_linear.bias",
        "blocks.0.attn_conv_Q_3.0.weight",
        "blocks.0.attn_conv_K_0.1.weight",
        "blocks.0.attn_conv_V_0.2.beta",
        "blocks.0.attn_concat_proj.2.gamma",
        "deconv.weight",
    ):
        assert key in sd, key
    # Unfolded tokens: d_model = emb_dim * emb_ks; concat -> 2 * d_model.
    assert sd["blocks.0.intra_linear.weight"].shape == (64, 4, 8)
    assert sd["blocks.0.attn_conv_Q_0.2.gamma"].shape == (1, 4, 1, 129)


@pytest.mark.parametrize("T, batch", [(7999, 1), (8000, 3), (32000, 1)])
def test_output_shape(T, batch):
    torch.manual_seed(0)
    model = load_fragment("spmamba.yaml", SMALL)["separator"].eval()
    with torch.no_grad():
        est = model(torch.randn(batch, T))
    assert est.shape == (batch, T, 2)
    assert torch.isfinite(est).all()


def test_batch_items_are_independent():
    """Item 1 of a batch of 3 is the same as that mixture on its own."""
    torch.manual_seed(0)
    model = load_fragment("spmamba.yaml", SMALL)["separator"].eval()
    mix = torch.randn(3, 1001)
    mix[1] *= 30.0  # a louder item: per-item normalisation
    with torch.no_grad():
        batched = model(mix)
        single = model(mix[1:2])
    assert batched.shape == (3, 1001, 2)
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T", [1, 300])
def test_short_and_three_speakers(T):
    hp = load_fragment("spmamba.yaml", {**SMALL, "num_spks": 3})
    with torch.no_grad():
        est = hp["separator"].eval()(torch.randn(2, T))
    assert est.shape == (2, T, 3)
    assert torch.isfinite(est).all()


def test_full_model_forward():
    model = load_fragment("spmamba.yaml")["separator"].eval()
    with torch.no_grad():
        est = model(torch.randn(1, 500))  # 8 frames: one unfold window
    assert est.shape == (1, 500, 2) and torch.isfinite(est).all()


def test_output_scale_follows_input():
    """Std normalisation is undone: scaling the mixture scales the output."""
    torch.manual_seed(0)
    model = SPMamba(emb_dim=4, num_layers=1, d_state=4).eval()
    mix = torch.randn(2, 800)
    with torch.no_grad():
        a, b = model(mix), model(7.0 * mix)
    torch.testing.assert_close(b, 7.0 * a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_fft, hop, T", [(256, 64, 7999), (512, 128, 16001), (256, 64, 77)])
def test_stft_round_trip(n_fft, hop, T):
    x = torch.randn(3, T)
    spec = stft_analysis(x, n_fft, hop)
    assert spec.shape[1] == n_fft // 2 + 1
    y = stft_synthesis(spec, n_fft, hop, T)
    assert y.shape == x.shape
    assert (x - y).abs().max() < 1e-4


def test_float32_stft_under_autocast():
    torch.manual_seed(0)
    model = SPMamba(emb_dim=4, num_layers=1, d_state=4).eval()
    mix = torch.randn(1, 4001)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        spec = stft_analysis(mix, 256, 64)
        est = model(mix)
    assert spec.dtype == torch.complex64
    assert est.dtype == torch.float32 and est.shape == (1, 4001, 2)
    assert torch.isfinite(est).all()


@pytest.mark.parametrize("shape", [(8000,), (1, 1, 8000), (2, 8000, 1)])
def test_wrong_rank_raises(shape):
    model = SPMamba(emb_dim=4, num_layers=1, d_state=4)
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(torch.randn(*shape))


def test_bad_heads_raises():
    with pytest.raises(ValueError, match="attn_heads"):
        SPMamba(emb_dim=6, attn_heads=4)
