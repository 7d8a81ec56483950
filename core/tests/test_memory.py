"""recursive_detach: nested outputs detached (and moved to the CPU), the input left alone."""

import torch

from torchplug.utilities import recursive_detach


def test_recursive_detach_detaches_nested_tensors_and_keeps_the_rest():
    weight = torch.ones(2, requires_grad=True)
    outputs = {"loss": (weight * 2).sum(), "parts": [weight * 3, "label", 7], "nested": {"x": weight + 1}}
    detached = recursive_detach(outputs, to_cpu=True)
    assert not detached["loss"].requires_grad and detached["loss"].item() == 4.0
    assert not detached["parts"][0].requires_grad and detached["parts"][1:] == ["label", 7]
    assert detached["nested"]["x"].device.type == "cpu" and not detached["nested"]["x"].requires_grad
    assert outputs["loss"].requires_grad and outputs["nested"]["x"].requires_grad  # the input is unchanged
