"""Module.clip_gradients inside configure_gradient_clipping: values that contradict the Trainer's are refused."""

import pytest

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader


class Clipping(BoringModel):
    def __init__(self, **clip):
        super().__init__()
        self.clip = clip

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, **self.clip)


@pytest.mark.parametrize(
    ("trainer_clip", "module_clip", "message"),
    [
        (
            {"gradient_clip_val": 1e-4},
            {"gradient_clip_val": 1e-2},
            r"gradient_clip_val=0.0001\)` and have passed ",
        ),
        (
            {"gradient_clip_algorithm": "norm"},
            {"gradient_clip_algorithm": "value"},
            r"gradient_clip_algorithm='norm'\)` and have passed `clip_gradients\(gradient_clip_algorithm='value'",
        ),
        (
            {},
            {"gradient_clip_val": 1.0, "gradient_clip_algorithm": "max"},
            r"gradient_clip_algorithm='max'.*'norm'",
        ),
    ],
)
def test_contradicting_clip_settings_are_refused(trainer_clip, module_clip, message):
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1, **trainer_clip)
    with pytest.raises(MisconfigurationError, match=message):
        trainer.fit(Clipping(**module_clip), regression_loader(8, 8))


def test_the_same_settings_clip():
    model = Clipping(gradient_clip_val=1e-3, gradient_clip_algorithm="value")
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=1, gradient_clip_val=1e-3)
    trainer.fit(model, regression_loader(8, 8))
