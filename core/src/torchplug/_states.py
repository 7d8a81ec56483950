"""What a trainer is doing: which entry point runs (``fn``), which part of it (``stage``), and how it ended (``status``).

The names and values are Lightning's (``lightning.pytorch.trainer.states``), so code that reads
``trainer.state.fn == "fit"`` or ``trainer.state.stage == RunningStage.VALIDATING`` ports unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class _StrEnum(str, Enum):
    """A string enum that equals its value, case-insensitively (``TrainerFn.FITTING == "FIT"``)."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Enum):
            other = other.value
        return isinstance(other, str) and self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())

    @classmethod
    def from_str(cls, value: str) -> Any:
        for member in cls:
            if member == value:
                return member
        raise ValueError(f"{value!r}: use one of {[m.value for m in cls]}")


class TrainerStatus(_StrEnum):
    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


class TrainerFn(_StrEnum):
    """The entry point that runs: ``fit``, ``validate``, ``test`` or ``predict``."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(_StrEnum):
    """The part of an entry point that runs: ``fit`` goes through sanity checking, training and validating."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str:
        """The name part of the loader hook that feeds this stage: ``val`` for ``val_dataloader()``."""
        return "val" if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING) else self.value


@dataclass
class TrainerState:
    status: TrainerStatus = TrainerStatus.INITIALIZING
    fn: TrainerFn | None = None
    stage: RunningStage | None = None

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped


class StageFlag:
    """A Trainer attribute such as ``trainer.training``: True while ``state.stage`` is that stage; setting it True
    enters the stage, False leaves it (as Lightning's setters)."""

    def __init__(self, stage: RunningStage) -> None:
        self.stage = stage

    def __get__(self, trainer: Any, owner: type | None = None) -> Any:
        return self if trainer is None else trainer.state.stage == self.stage

    def __set__(self, trainer: Any, value: bool) -> None:
        if value:
            trainer.state.stage = self.stage
        elif trainer.state.stage == self.stage:
            trainer.state.stage = None


__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]


class GradClipAlgorithmType(_StrEnum):
    """How ``Trainer(gradient_clip_val=...)`` clips: each gradient element (``"value"``) or the total norm of the
    gradients (``"norm"``)."""

    VALUE = "value"
    NORM = "norm"

    @staticmethod
    def supported_type(val: str) -> bool:
        return any(member == val for member in GradClipAlgorithmType)

    @staticmethod
    def supported_types() -> list[str]:
        return [member.value for member in GradClipAlgorithmType]
