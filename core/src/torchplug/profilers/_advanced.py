"""AdvancedProfiler: Python's cProfile, one profile per action."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from collections import defaultdict
from pathlib import Path
from typing import Any

from torchplug.profilers._base import Profiler


class AdvancedProfiler(Profiler):
    """A ``cProfile.Profile`` per action (``profiled_actions[action]``): which Python functions the action spent
    its time in. Verbose; for finding what inside a slow hook is slow.

    Args:
        dirpath, filename: where the report goes (see :class:`Profiler`).
        line_count_restriction: how many functions each action's report lists, as a count (``20``) or a fraction
            of them (``0.1``); ``1.0`` (the default) lists all.
        dump_stats: also write each action's raw profile to ``dirpath/<...>-<action>.prof`` (readable with
            ``pstats`` or snakeviz) when the report is made; needs ``dirpath``.

    Only one action is recorded at a time: starting an action pauses the one running (nested actions are
    attributed to the innermost).
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:  # fmt: skip
        super().__init__(dirpath=dirpath, filename=filename)
        if (
            isinstance(line_count_restriction, bool)
            or not isinstance(line_count_restriction, (int, float))
            or (line_count_restriction < 0)
        ):
            raise ValueError(
                f"AdvancedProfiler(line_count_restriction={line_count_restriction!r}): expected a number of lines "
                "(e.g. 20) or a fraction of them between 0.0 and 1.0"
            )
        self.profiled_actions: dict[str, cProfile.Profile] = defaultdict(cProfile.Profile)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats

    def start(self, action_name: str) -> None:
        for running in self.profiled_actions.values():  # one cProfile may be active at a time (Python 3.12+)
            running.disable()
        self.profiled_actions[action_name].enable()

    def stop(self, action_name: str) -> None:
        profile = self.profiled_actions.get(action_name)
        if profile is None:
            raise ValueError(
                f"Attempting to stop recording an action ({action_name}) which was never started."
            )
        profile.disable()

    def summary(self) -> str:
        if self.dump_stats and not self.dirpath:
            raise ValueError(
                "AdvancedProfiler(dump_stats=True) writes .prof files into dirpath; pass dirpath=..."
            )
        reports = {}
        for action, profile in self.profiled_actions.items():
            if self.dump_stats:
                os.makedirs(self.dirpath, exist_ok=True)  # type: ignore[arg-type]
                profile.dump_stats(os.path.join(self.dirpath, self._prepare_filename(action, ".prof")))  # type: ignore[arg-type]
            text = io.StringIO()
            pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction
            )
            reports[action] = text.getvalue()
        return self._stats_to_str(reports)

    def teardown(self, stage: str | None) -> None:
        super().teardown(stage=stage)
        self.profiled_actions.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["profiled_actions"] = None  # cProfile.Profile objects cannot be copied or pickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.profiled_actions = defaultdict(cProfile.Profile)
