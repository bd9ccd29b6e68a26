"""Inference precisions: int8 on the shipped models, and clear refusals.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

from sb_mamba.errors import UserError
from sb_mamba.inference import MambaSeparator
from sb_mamba.inference import precision as prec
from sb_mamba.nnet.mamba import Mamba
from sb_mamba.resources import pretrained_path
from tests.helpers import make_mixture, si_snr_improvement


def _load(name, precision):
    return MambaSeparator.from_hparams(
        source=pretrained_path(name), run_opts={"device": "cpu", "precision": precision}
    )


def test_int8_shipped_model_separates_as_fp32():
    mix, sources = make_mixture(seconds=3.0)
    fp32, int8 = _load("sepmamba-8k", "fp32"), _load("sepmamba-8k", "int8")
    mixers = [m for m in int8.mods.separator.modules() if isinstance(m, Mamba)]
    assert mixers and all(m._int8 is not None for m in mixers)  # int8 really runs
    a, b = fp32.separate_batch(mix), int8.separate_batch(mix)
    assert not torch.equal(a, b)
    assert (b - a).norm() / a.norm() < 0.1
    ia, ib = si_snr_improvement(a, sources, mix), si_snr_improvement(b, sources, mix)
    assert ia > 1.5 and abs(ib - ia) < 0.3, (ia, ib)  # the model separates; int8 as well


def test_int8_keeps_the_weights():
    m = Mamba(16, d_state=4).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.pack_int8()
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_int8_streams_close_to_fp32():
    # int8 quantizes each call's input by its own range: a stream is not
    # bit-equal to the offline int8 pass, but as close to fp32 as that pass
    mix = make_mixture(seconds=1.5)[0][0]
    ref = _load("sepmamba-causal-8k", "fp32").separate_batch(mix[None])[0]
    model = _load("sepmamba-causal-8k", "int8")
    offline = model.separate_batch(mix[None])[0]
    stream = model.stream()
    parts = [stream.feed(mix[a : a + 333]) for a in range(0, mix.numel(), 333)]
    streamed = torch.cat([*parts, stream.flush()])
    assert streamed.shape == ref.shape
    for est in (offline, streamed):
        assert not torch.equal(est, ref) and (est - ref).norm() / ref.norm() < 0.03


def test_int8_refuses_training():
    m = Mamba(16, d_state=4)
    m.pack_int8()
    with pytest.raises(RuntimeError, match="inference"):
        m(torch.randn(1, 10, 16))


@pytest.mark.parametrize(
    ("precision", "device", "words"),
    [
        ("int8", "cuda", "on the CPU"),
        ("fp16", "cpu", "for GPUs"),
        ("int4", "cpu", "not one of"),
    ],
)
def test_unsupported_precisions_are_refused(precision, device, words):
    with pytest.raises(UserError, match=words):
        prec.check_precision(precision, device)


def test_bf16_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(prec, "native_cpu_bf16", lambda: False)
    with pytest.raises(UserError, match="no native bf16.*int8"):
        prec.check_precision("bf16", "cpu")
    monkeypatch.setattr(prec, "native_cpu_bf16", lambda: True)
    assert prec.check_precision("bf16", "cpu") == "bf16"
    assert prec.check_precision("bf16", "cuda:0") == "bf16"


def test_separator_refuses_before_separating():
    with pytest.raises(UserError, match="fp16 is for GPUs"):
        _load("sepmamba-8k", "fp16")
