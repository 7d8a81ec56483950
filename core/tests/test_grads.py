"""grad_norm: per-parameter and total gradient norms, named as Lightning logs them."""

import math

import pytest
import torch
from torch import nn

from torchplug.utilities import grad_norm


def _model(dtype=torch.float32):
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(3, dtype=dtype))
    model.b = nn.Parameter(torch.zeros(2, dtype=dtype))
    model.frozen = nn.Parameter(torch.zeros(1, dtype=dtype))  # no gradient: left out
    model.a.grad = torch.tensor([3.0, -4.0, 0.0], dtype=dtype)
    model.b.grad = torch.tensor([-12.0, 0.0], dtype=dtype)
    return model


@pytest.mark.parametrize(
    ("norm_type", "key", "a", "b", "total"),
    [(2, "2.0", 5.0, 12.0, 13.0), (1, "1.0", 7.0, 12.0, 19.0), ("inf", "inf", 4.0, 12.0, 12.0)],
)
def test_norms_per_parameter_and_in_total(norm_type, key, a, b, total):
    norms = grad_norm(_model(), norm_type)
    assert set(norms) == {f"grad_{key}_norm/a", f"grad_{key}_norm/b", f"grad_{key}_norm_total"}
    assert norms[f"grad_{key}_norm/a"].item() == pytest.approx(a)
    assert norms[f"grad_{key}_norm/b"].item() == pytest.approx(b)
    assert norms[f"grad_{key}_norm_total"].item() == pytest.approx(total)


def test_double_gradients_stay_double_and_no_gradients_give_nothing():
    model = _model(torch.float64)
    model.a.grad = torch.full((3,), 1e23, dtype=torch.float64)  # its square overflows in float32
    total = grad_norm(model, 2)["grad_2.0_norm_total"]
    assert total.dtype == torch.float64 and total.item() == pytest.approx(math.sqrt(3) * 1e23)
    assert grad_norm(nn.Linear(2, 2), 2) == {}


@pytest.mark.parametrize("norm_type", [0, -2, "-inf"])
def test_non_positive_norm_types_are_refused(norm_type):
    with pytest.raises(ValueError, match="`norm_type` must be a positive number or 'inf'"):
        grad_norm(_model(), norm_type)
