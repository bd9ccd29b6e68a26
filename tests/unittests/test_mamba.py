"""Mamba, MambaBlock and BiMamba: layout, streaming, causality, learning.

Authors
-------
 * sb_mamba developers
"""

import math

import pytest
import torch

from sb_mamba.nnet.bimamba import BiMamba, MambaBlock
from sb_mamba.nnet.mamba import Mamba
from tests.helpers import CPU_BACKENDS

# mamba_ssm.modules.mamba_simple.Mamba(d_model=64) with its defaults
# (d_state=16, d_conv=4, expand=2, dt_rank=ceil(64/16)=4, conv_bias=True,
# bias=False): d_inner = 128, x_proj out = dt_rank + 2*d_state = 36.
MAMBA_SSM_D64 = {
    "A_log": (128, 16),
    "D": (128,),
    "in_proj.weight": (256, 64),
    "conv1d.weight": (128, 1, 4),
    "conv1d.bias": (128,),
    "x_proj.weight": (36, 128),
    "dt_proj.weight": (128, 4),
    "dt_proj.bias": (128,),
    "out_proj.weight": (64, 128),
}


def test_state_dict_matches_mamba_ssm_layout():
    sd = Mamba(d_model=64).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == MAMBA_SSM_D64
    assert sum(v.numel() for v in sd.values()) == 32640


def test_block_layout_and_expand():
    ln = MambaBlock(64).state_dict()
    assert set(ln) == {"mixer." + k for k in MAMBA_SSM_D64} | {"norm.weight", "norm.bias"}
    rms = MambaBlock(16, norm="rmsnorm", expand=4).state_dict()
    assert "norm.bias" not in rms and rms["mixer.in_proj.weight"].shape == (128, 16)


def test_state_dict_moves_between_backends():
    a = Mamba(16, d_state=4, ssm_backend="torch")
    b = Mamba(16, d_state=4, ssm_backend=CPU_BACKENDS[-1])
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 40, 16)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_init_follows_mamba_ssm():
    m = Mamba(32, d_state=8, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(m.A_log.exp(), torch.arange(1.0, 9).repeat(64, 1))
    assert torch.equal(m.D, torch.ones(64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_step_equals_full_forward(backend):
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, d_conv=4, ssm_backend=backend).eval()
    x = torch.randn(2, 33, 16)
    with torch.no_grad():
        full = m(x)
        conv, ssm = m.allocate_inference_cache(2)
        steps = [m.step(x[:, t : t + 1], conv, ssm)[0] for t in range(33)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mamba_is_causal(backend):
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, ssm_backend=backend)
    x = torch.randn(1, 60, 16)
    x2 = x.clone()
    x2[:, 31:] = torch.randn(1, 29, 16)
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert torch.equal(y[:, :31], y2[:, :31])
    assert not torch.allclose(y[:, 31:], y2[:, 31:])


def test_bimamba_directions_and_merge():
    torch.manual_seed(0)
    bm = BiMamba(16, num_blocks=2, d_state=4, ssm_backend="torch")
    x = torch.randn(2, 40, 16)
    manual_f, manual_b = x, x.flip(1)
    for blk in bm.forward_blocks:
        manual_f = manual_f + blk.mixer(blk.norm(manual_f))
    for blk in bm.backward_blocks:
        manual_b = manual_b + blk.mixer(blk.norm(manual_b))
    with torch.no_grad():
        torch.testing.assert_close(bm(x), manual_f + manual_b.flip(1))
        cat = BiMamba(16, 1, merge="concat", d_state=4, ssm_backend="torch")
        assert cat(x).shape == (2, 40, 32) and cat.output_size == 32
    # bidirectional: the first output depends on later inputs
    x2 = x.clone()
    x2[:, 3] += torch.randn(2, 16)
    with torch.no_grad():
        assert (bm(x)[:, 0] - bm(x2)[:, 0]).abs().max() > 1e-4
    causal = BiMamba(16, 2, bidirectional=False, d_state=4, ssm_backend="torch")
    assert causal.backward_blocks is None
    with torch.no_grad():
        assert torch.equal(causal(x)[:, :3], causal(x2)[:, :3])
        assert not torch.equal(causal(x)[:, 3:], causal(x2)[:, 3:])


def test_out_proj_rescaled_by_depth():
    torch.manual_seed(0)
    shallow = BiMamba(64, num_blocks=1, ssm_backend="torch")
    deep = BiMamba(64, num_blocks=16, ssm_backend="torch")
    s = shallow.forward_blocks[0].mixer.out_proj.weight.std()
    d = deep.forward_blocks[0].mixer.out_proj.weight.std()
    assert abs(s / d - math.sqrt(16)) < 0.4


def test_bad_options():
    with pytest.raises(ValueError, match="ssm_backend"):
        Mamba(8, ssm_backend="gpu")
    with pytest.raises(ValueError, match="norm"):
        MambaBlock(8, norm="batchnorm")
    with pytest.raises(ValueError, match="merge"):
        BiMamba(8, merge="mean")


def test_mamba_learns_a_delayed_copy():
    """Recall the input from 5 steps back: needs the state, not the conv (k=4).

    Run on the fastest CPU backend; the backends' equality is tested above.
    """
    backend = CPU_BACKENDS[-1]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        MambaBlock(16, d_state=8, ssm_backend=backend),
        MambaBlock(16, d_state=8, ssm_backend=backend),
    )
    proj_in, proj_out = torch.nn.Linear(1, 16), torch.nn.Linear(16, 1)
    params = [*model.parameters(), *proj_in.parameters(), *proj_out.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(150):
        x = torch.randn(8, 64, 1)
        target = torch.nn.functional.pad(x, (0, 0, 5, 0))[:, :64]
        loss = torch.nn.functional.mse_loss(proj_out(model(proj_in(x))), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.2 * first, (first, last)


# ---------------------------------------------------------------------------
# The fused CPU path (sb_mamba.nnet.fused) against the PyTorch op.
# ---------------------------------------------------------------------------

needs_kernel = pytest.mark.skipif(
    "cpu_kernel" not in CPU_BACKENDS, reason="SB_MAMBA_NO_CPU_KERNEL=1"
)


def _twins(d_model, d_state, conv_bias=True, bias=False, seed=0):
    """The same Mamba on the torch backend and on the fused CPU kernels."""
    torch.manual_seed(seed)
    ref = Mamba(d_model, d_state=d_state, conv_bias=conv_bias, bias=bias, ssm_backend="torch")
    with torch.no_grad():  # non-trivial D, biases and A
        ref.D.normal_()
        ref.A_log.add_(0.3 * torch.randn_like(ref.A_log))
        for p in (ref.in_proj.bias, ref.out_proj.bias, ref.conv1d.bias):
            if p is not None:
                p.normal_()
    fused = Mamba(
        d_model, d_state=d_state, conv_bias=conv_bias, bias=bias, ssm_backend="cpu_kernel"
    )
    fused.load_state_dict(ref.state_dict())
    assert fused.state_dict().keys() == ref.state_dict().keys()
    return ref, fused


def _assert_grads_close(a, b, names):
    for name, ga, gb in zip(names, a, b):
        scale = gb.abs().max().item()
        torch.testing.assert_close(
            ga, gb, rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=lambda m, n=name: f"{n}: {m}"
        )


@needs_kernel
@pytest.mark.parametrize("length", [1, 3, 255, 700])
@pytest.mark.parametrize(
    "d_model, d_state, conv_bias, bias", [(16, 16, True, False), (10, 5, False, True)]
)
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_mamba_matches_torch_backend(length, d_model, d_state, conv_bias, bias, reverse):
    """Outputs, input gradient and every parameter gradient, both directions."""
    ref, fused = _twins(d_model, d_state, conv_bias, bias, seed=length)
    assert fused.uses_fused_path(torch.randn(1, 2, d_model))
    assert not ref.uses_fused_path(torch.randn(1, 2, d_model))
    x = torch.randn(2, length, d_model, requires_grad=True)
    y_ref, y = ref(x, reverse=reverse), fused(x, reverse=reverse)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the segmented inference path
        torch.testing.assert_close(fused(x, reverse=reverse), y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    g_ref = torch.autograd.grad((y_ref * gy).sum(), [x, *ref.parameters()])
    g = torch.autograd.grad((y * gy).sum(), [x, *fused.parameters()])
    _assert_grads_close(g, g_ref, names)


@needs_kernel
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_inner_function_matches_reference(reverse):
    """mamba_inner_cpu against mamba_inner_ref: values and all gradients."""
    from sb_mamba.nnet.fused import mamba_inner_cpu, mamba_inner_ref

    torch.manual_seed(0)
    Di, R, S, L = 24, 2, 6, 131
    params = [
        torch.randn(Di, 1, 4),
        torch.randn(Di),
        0.5 * torch.randn(R + 2 * S, Di),
        0.5 * torch.randn(Di, R),
        torch.randn(Di) - 2,
        0.3 * torch.randn(Di, S),
        torch.randn(Di),
    ]
    params = [p.requires_grad_() for p in params]
    xz = torch.randn(2, L, 2 * Di, requires_grad=True)
    y_ref = mamba_inner_ref(xz, *params, reverse=reverse)
    y = mamba_inner_cpu(xz, *params, reverse=reverse)
    assert ((y - y_ref).norm() / y_ref.norm()).item() < 1e-5
    _assert_grads_close([y], [y_ref], ["y"])
    gy = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), [xz, *params])
    g = torch.autograd.grad((y * gy).sum(), [xz, *params])
    names = ["xz", "conv_w", "conv_b", "x_proj", "dt_proj_w", "dt_proj_b", "A_log", "D"]
    _assert_grads_close(g, g_ref, names)
    with torch.no_grad():
        xz2 = xz.detach().clone()
        out = mamba_inner_cpu(xz2, *params, reverse=reverse, inplace=True)
        assert out.data_ptr() == xz2.data_ptr()  # y overwrote x
        torch.testing.assert_close(out, y)


@needs_kernel
@pytest.mark.parametrize("segment", [1, 3, 64, 2048])
@pytest.mark.parametrize("reverse", [False, True])
def test_segmented_inference_does_not_depend_on_segment(segment, reverse):
    from sb_mamba.nnet.fused import mamba_mixer_inference_cpu

    _, m = _twins(16, 16, bias=True)
    x = torch.randn(2, 300, 16)
    weights = [
        m.in_proj.weight,
        m.in_proj.bias,
        m.conv1d.weight,
        m.conv1d.bias,
        m.x_proj.weight,
        m.dt_proj.weight,
        m.dt_proj.bias,
        m.A_log,
        m.D,
        m.out_proj.weight,
        m.out_proj.bias,
    ]
    with torch.no_grad():
        whole = mamba_mixer_inference_cpu(x, *weights, reverse=reverse, segment=10**6)
        parts = mamba_mixer_inference_cpu(x, *weights, reverse=reverse, segment=segment)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_fused_bimamba_matches_torch_backend():
    """BiMamba's backward stack runs the kernels in reverse time (no flip)."""
    torch.manual_seed(0)
    ref = BiMamba(16, num_blocks=2, d_state=8, ssm_backend="torch")
    fused = BiMamba(16, num_blocks=2, d_state=8, ssm_backend="cpu_kernel")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 77, 16, requires_grad=True)
    y_ref, y = ref(x), fused(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *ref.parameters()])
    g = torch.autograd.grad(y.square().sum(), [x, *fused.parameters()])
    _assert_grads_close(g, g_ref, ["x"] + [n for n, _ in ref.named_parameters()])


def test_bfloat16_keeps_the_reference_path():
    """bf16 never takes the fused float32 kernels; the scan state stays fp32."""
    m = Mamba(16, d_state=4).to(torch.bfloat16)
    x = torch.randn(2, 20, 16, dtype=torch.bfloat16)
    assert not m.uses_fused_path(x)
    y = m(x, reverse=True)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 20, 16)
    with torch.no_grad():
        ref = m.float()(x.float().flip(1)).flip(1)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 3e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not Mamba(16, d_state=4).uses_fused_path(torch.randn(1, 4, 16))
