"""isolate_rng: random draws inside the block do not change those after it."""

import random

import pytest
import torch

from torchplug.utilities import GradClipAlgorithmType, isolate_rng

np = pytest.importorskip("numpy")  # installed with the plot extra (matplotlib); isolate_rng works without it


def test_isolate_rng_restores_python_numpy_and_torch_generators():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    with isolate_rng():
        inside = (torch.rand(1).item(), random.random(), np.random.rand())
    assert (torch.rand(1).item(), random.random(), np.random.rand()) == inside
    state = torch.get_rng_state()
    expected = torch.rand(1).item()
    torch.set_rng_state(state)
    with isolate_rng(include_cuda=False):
        torch.rand(3)
    assert torch.rand(1).item() == expected  # the draws inside the block left the generator where it was


def test_grad_clip_algorithm_type():
    assert GradClipAlgorithmType.supported_types() == ["value", "norm"]
    assert GradClipAlgorithmType.supported_type("Norm") and not GradClipAlgorithmType.supported_type("norm2")
