"""SimpleProfiler: wall time of each action."""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

from torchplug.profilers._base import Profiler


class SimpleProfiler(Profiler):
    """Wall time per action: ``recorded_durations[action]`` lists each call's seconds.

    ``summary()`` is a table of each action's mean and total time, longest first; with ``extended`` (the default) it
    also has the number of calls and each action's share of the time since the profiler was made, and a total row.

    Raises ``ValueError`` when an action is started twice, or stopped without having been started.
    """

    def __init__(
        self, dirpath: str | Path | None = None, filename: str | None = None, extended: bool = True
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.extended = extended
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        started = self.current_actions.pop(action_name, None)
        if started is None:
            raise ValueError(
                f"Attempting to stop recording an action ({action_name}) which was never started."
            )
        self.recorded_durations[action_name].append(end - started)

    def summary(self) -> str:
        sep = os.linesep
        title = (f"{self._stage.upper()} " if self._stage else "") + "Profiler Report" + sep
        if not self.recorded_durations:
            return title + sep
        width = max(len(name) for name in self.recorded_durations)

        def row(*cells: str) -> str:
            first, *rest = cells
            return f"{sep}|  {first:<{width}s}\t|" + "".join(f"  {cell:<15}\t|" for cell in rest)

        totals = {name: math.fsum(durations) for name, durations in self.recorded_durations.items()}
        if self.extended:
            header = row("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
        else:
            header = row("Action", "Mean duration (s)", "Total time (s)")
        rule = sep + "-" * len(header.expandtabs())
        out = [title, rule, header, rule]
        if self.extended:
            run_time = time.perf_counter() - self.start_time
            calls = sum(len(durations) for durations in self.recorded_durations.values())
            out += [row("Total", "-", str(calls), f"{run_time:.5}", "100 %"), rule]
            for name in sorted(totals, key=totals.__getitem__, reverse=True):
                count, total = len(self.recorded_durations[name]), totals[name]
                share = 100.0 * total / run_time if run_time else 0.0
                out.append(row(name, f"{total / count:.5}", str(count), f"{total:.5}", f"{share:.5}"))
        else:
            means = {name: totals[name] / len(self.recorded_durations[name]) for name in totals}
            for name in sorted(means, key=means.__getitem__, reverse=True):
                out.append(row(name, f"{means[name]:.5}", f"{totals[name]:.5}"))
        out += [rule, sep]
        return "".join(out)
