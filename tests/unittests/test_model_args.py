"""Self-describing separators: ``type(m)(**m.get_model_args())`` rebuilds ``m``.

Every separator fragment of ``hparams/models`` is built (small overrides for
speed), rebuilt from its recorded arguments, loaded strictly with the
original's weights and compared on a short random input.

Authors
-------
 * sb_mamba developers
"""

import inspect
import json

import pytest
import torch

from sb_mamba.lobes.base import ModelArgsMixin
from tests.helpers import FRAGMENTS, load_fragment

SMALL = {  # file name prefix -> overrides that keep the model small
    "sepmamba": {"dim": 8, "num_blocks": 1, "d_state": 4},
    "spmamba": {"emb_dim": 4, "num_layers": 1, "expand": 2, "d_state": 4},
    "s4m": {"out_channels": 16, "in_channels": 32, "num_blocks": 2},
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _overrides(name):
    return next(v for k, v in SMALL.items() if name.startswith(k))


def _is_plain(value):
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def test_every_fragment_is_covered():
    assert FRAGMENTS and all(any(n.startswith(k) for k in SMALL) for n in FRAGMENTS)


@pytest.mark.parametrize("name", FRAGMENTS)
def test_fragment_rebuilds_from_its_model_args(name):
    overrides = {"num_spks": 3, **_overrides(name)}
    torch.manual_seed(0)
    hp = load_fragment(name, overrides)
    model = hp["separator"].eval()
    args = model.get_model_args()

    # every constructor argument, defaults filled in, as plain values
    params = list(inspect.signature(type(model).__init__).parameters)[1:]
    assert list(args) == params
    assert all(_is_plain(v) for v in args.values()), args
    assert json.loads(json.dumps(args)) == args
    for key, value in overrides.items():
        assert args[key] == value

    torch.manual_seed(1)  # other initial weights: the state_dict must carry them all
    rebuilt = type(model)(**args).eval()
    assert rebuilt.get_model_args() == args
    ref_layout = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == ref_layout
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    mix = torch.randn(2, 1200)
    with torch.no_grad():
        est, est_rebuilt = model(mix), rebuilt(mix)
    assert est.shape == (2, 1200, 3)
    assert torch.equal(est, est_rebuilt)


def test_model_args_are_a_copy():
    model = load_fragment("sepmamba_s.yaml", SMALL["sepmamba"])["separator"]
    model.get_model_args()["dim"] = 1000
    assert model.get_model_args()["dim"] == 8


class _Net(ModelArgsMixin, torch.nn.Module):
    def __init__(self, n, sizes=(1, 2), scale=0.5, **extra):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)


class _Wider(_Net):
    def __init__(self, width=4):
        super().__init__(width, sizes=(width,))


def test_mixin_records_bound_arguments():
    assert _Net(3, flag=True).get_model_args() == {
        "n": 3,
        "sizes": [1, 2],
        "scale": 0.5,
        "flag": True,
    }
    assert _Wider().get_model_args() == {"width": 4}  # the subclass's own arguments
    assert "_model_args" not in str(_Net(3).state_dict().keys())


def test_mixin_refuses_values_that_are_not_plain():
    with pytest.raises(TypeError, match="not a plain value"):
        _Net(3, scale=torch.tensor(0.5))
