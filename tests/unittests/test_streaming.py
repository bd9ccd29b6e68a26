"""Streaming separation: carried states, streamed == offline, causality.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

from sb_mamba.errors import UserError
from sb_mamba.inference.separator import MambaSeparator
from sb_mamba.inference.streaming import StreamingSeparator
from sb_mamba.lobes.sepmamba import SepMamba, causal_lookahead
from sb_mamba.nnet._cpu_kernel import load_cpu_kernel
from sb_mamba.nnet.bimamba import BiMamba
from sb_mamba.nnet.mamba import Mamba, set_ssm_backend
from sb_mamba.nnet.scan import selective_scan
from sb_mamba.nnet.scan_torch import selective_scan_ref

CPU_KERNEL = load_cpu_kernel() is not None
BACKENDS = ["torch"] + ["cpu_kernel"] * CPU_KERNEL


def causal_net(kernel_size=16, output="mask", backend="auto", seed=0, **kwargs):
    torch.manual_seed(seed)
    args = dict(num_spks=2, dim=8, num_blocks=1, d_state=4, stride=4, num_levels=3)
    net = SepMamba(kernel_size=kernel_size, causal=True, output=output, **(args | kwargs))
    set_ssm_backend(net, backend)
    return net.eval()


def offline(net, mix):
    with torch.no_grad():
        return net(mix[None])[0]  # [T, S]


def streamed(net, mix, sizes):
    """Feed ``mix`` in chunks of ``sizes`` (cycled), then flush."""
    stream, parts, a, i = StreamingSeparator(net), [], 0, 0
    while a < mix.shape[0]:
        parts.append(stream.feed(mix[a : a + sizes[i % len(sizes)]]))
        a, i = a + sizes[i % len(sizes)], i + 1
    parts.append(stream.flush())
    return torch.cat(parts)


def assert_close(est, ref, rtol=1e-4):
    assert est.shape == ref.shape
    err = (est - ref).abs().max() / ref.abs().max()
    assert err < rtol, float(err)


# ------------------------------------------------------------ the scans
@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_initial_state_continues_the_sequence(backend):
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 8, 40, generator=g), torch.rand(2, 8, 40, generator=g)
    A = -torch.rand(8, 16, generator=g)
    B, C = torch.randn(2, 16, 40, generator=g), torch.randn(2, 16, 40, generator=g)
    y, last = selective_scan(u, delta, A, B, C, return_last_state=True, backend=backend)
    h, parts = None, []
    for a, b in ((0, 1), (1, 8), (8, 40)):
        yp, h = selective_scan(
            u[..., a:b],
            delta[..., a:b],
            A,
            B[..., a:b],
            C[..., a:b],
            return_last_state=True,
            backend=backend,
            initial_state=h,
        )
        parts.append(yp)
    assert torch.allclose(torch.cat(parts, -1), y, rtol=1e-5, atol=1e-5)
    assert torch.allclose(h, last, rtol=1e-5, atol=1e-5)
    h8 = selective_scan(
        u[..., :8],
        delta[..., :8],
        A,
        B[..., :8],
        C[..., :8],
        return_last_state=True,
        backend=backend,
    )[1]
    ref, ref_last = selective_scan_ref(
        u[..., 8:],
        delta[..., 8:],
        A,
        B[..., 8:],
        C[..., 8:],
        return_last_state=True,
        initial_state=h8,
    )
    assert torch.allclose(parts[-1], ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(h, ref_last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_gradients_with_initial_state(backend):
    g = torch.Generator().manual_seed(1)
    args = [
        torch.randn(1, 4, 12, generator=g),
        torch.rand(1, 4, 12, generator=g),
        -torch.rand(4, 3, generator=g),
        torch.randn(1, 3, 12, generator=g),
        torch.randn(1, 3, 12, generator=g),
    ]
    h0 = torch.randn(1, 4, 3, generator=g)
    grads = []
    for fn in (
        lambda *a: selective_scan(*a, backend=backend, initial_state=h0),
        lambda *a: selective_scan_ref(*a, initial_state=h0),
    ):
        leaves = [t.clone().requires_grad_() for t in args]
        fn(*leaves).pow(2).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ Mamba layers
@pytest.mark.parametrize("path", ["cpu_kernel", "torch", "steps"])
def test_mamba_forward_chunk_paths(path):
    if path == "cpu_kernel" and not CPU_KERNEL:
        pytest.skip("the fused CPU kernels are not available")
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, ssm_backend="torch" if path == "steps" else path).eval()
    x = torch.randn(2, 37, 16)
    st = m.allocate_chunk_state(2)
    assert (st["kernel"] is not None) == (path == "cpu_kernel")
    with torch.no_grad():
        if path == "steps":  # what the cuda backend runs: step() per frame
            parts = [
                m._chunk_by_steps(x[:, a:b], st["hist"], st["ssm"])
                for a, b in ((0, 1), (1, 5), (5, 37))
            ]
        else:
            parts = [m.forward_chunk(x[:, a:b], st) for a, b in ((0, 1), (1, 5), (5, 37))]
        assert torch.allclose(torch.cat(parts, 1), m(x), rtol=1e-4, atol=1e-5)


def test_bidirectional_layer_cannot_stream():
    with pytest.raises(ValueError, match="bidirectional"):
        BiMamba(8, 1, bidirectional=True, d_state=4).allocate_chunk_state(1)


# ------------------------------------------------------------ streamed == offline
FRAME = 4**3  # one bottleneck frame for stride 4, 3 levels


@pytest.mark.parametrize("kernel_size", [16, 8])
@pytest.mark.parametrize("output", ["mask", "mapping"])
@pytest.mark.parametrize(
    "sizes", [[1], [7], [FRAME], [8000], "random"], ids=["1", "7", "frame", "1s", "random"]
)
def test_streamed_equals_offline(kernel_size, output, sizes):
    net = causal_net(kernel_size, output)
    T = {8000: 9001, 1: 700}.get(sizes[0], 1503) if sizes != "random" else 1503
    mix = torch.randn(T, generator=torch.Generator().manual_seed(1))
    if sizes == "random":
        sizes = torch.randint(0, 300, (50,), generator=torch.Generator().manual_seed(2))
        sizes = sizes.tolist()
    assert_close(streamed(net, mix, sizes), offline(net, mix))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("num_levels, T", [(1, 40), (2, 10), (3, 1), (3, 100), (3, 2000)])
def test_streamed_equals_offline_layouts(backend, num_levels, T):
    net = causal_net(16, "mapping", backend, num_levels=num_levels, num_spks=3)
    mix = torch.randn(T, generator=torch.Generator().manual_seed(3))
    assert_close(streamed(net, mix, [13]), offline(net, mix))


def test_reset_and_reuse():
    net = causal_net()
    mix = torch.randn(3000)
    stream = StreamingSeparator(net)
    stream.feed(torch.randn(777))
    stream.reset()
    first = stream.separate(mix, chunk=100)  # separate() resets too
    assert_close(first, offline(net, mix))
    assert_close(stream.separate(mix, chunk=33), first)  # flush left it reset


# ------------------------------------------------------------ causality and latency
@pytest.mark.parametrize("kernel_size, lookahead", [(16, 315), (8, 147)])
def test_causality(kernel_size, lookahead):
    net = causal_net(kernel_size)
    assert net.lookahead == causal_lookahead(kernel_size, 4, 3) == lookahead
    g = torch.Generator().manual_seed(4)
    mix = torch.randn(4000, generator=g)
    ref = offline(net, mix)
    for t in (0, 500, 1283, 2048, 3000):
        changed = mix.clone()
        changed[t + lookahead + 1 :] = torch.randn(4000 - t - lookahead - 1, generator=g)
        assert torch.equal(offline(net, changed)[: t + 1], ref[: t + 1])
    # and the bound is tight: an output t at a multiple of stride ** levels
    # reads input t + lookahead (weakly with random weights, and not through
    # a ReLU that is off: a few t)
    moved = []
    for t in range(1024, 3200, 192):
        changed = mix.clone()
        changed[t + lookahead] += 1.0
        moved.append(not torch.equal(offline(net, changed)[t], ref[t]))
    assert any(moved)


@pytest.mark.parametrize("kernel_size", [16, 8])
def test_outputs_wait_at_most_the_lookahead(kernel_size):
    net = causal_net(kernel_size)
    stream = StreamingSeparator(net)
    waiting = []
    for n in range(1, 800):  # one sample at a time
        stream.feed(torch.randn(1))
        waiting.append(n - stream.samples_out)  # samples fed, not yet answered
    assert max(waiting[400:]) == net.lookahead
    assert stream.latency_ms(FRAME) == pytest.approx(1000 * (net.lookahead + FRAME) / 8000)


# ------------------------------------------------------------ the front door
def test_non_causal_models_are_refused():
    net = SepMamba(dim=8, num_blocks=1, d_state=4)
    with pytest.raises(UserError, match="not causal"):
        StreamingSeparator(net)
    with pytest.raises(UserError, match="causal SepMamba"):
        StreamingSeparator(torch.nn.Linear(2, 2))


def test_separator_stream_and_separate_signal(tmp_path):
    net = causal_net(8, "mask")
    model = MambaSeparator(
        {"separator": net}, {"sample_rate": 8000, "num_spks": 2}, run_opts={"device": "cpu"}
    )
    mix = 0.1 * torch.randn(2345)
    stream = model.stream()
    assert stream.frame == FRAME and stream.lookahead == 147
    assert_close(stream.separate(mix, chunk=50), offline(net, mix))
    a = model.separate_signal(mix, chunk_seconds=None)
    b = model.separate_signal(mix, stream=True)
    assert_close(b, a)
    model = MambaSeparator(
        {"separator": SepMamba(dim=8, num_blocks=1, d_state=4)},
        {"sample_rate": 8000, "num_spks": 2},
        run_opts={"device": "cpu"},
    )
    with pytest.raises(UserError, match="not causal"):
        model.stream()
