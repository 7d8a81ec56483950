from __future__ import annotations

from typing import TYPE_CHECKING

from torchplug import MisconfigurationError

if TYPE_CHECKING:
    from torchplug import Trainer


def check_layout(trainer: Trainer, who: str, nodes: int, processes: int, how_to_fix: str) -> None:
    """Fail clearly when the Trainer's ``num_nodes``/``devices`` disagree with the processes a launcher made."""
    per_node = trainer.num_processes
    if trainer.num_nodes != nodes:
        raise MisconfigurationError(
            f"num_nodes={trainer.num_nodes}, but {who} started the job on {nodes} node(s): pass num_nodes={nodes}, "
            f"or {how_to_fix}"
        )
    if per_node * nodes != processes:
        raise MisconfigurationError(
            f"devices={trainer.devices_arg!r} with strategy={trainer.strategy_name!r} needs {per_node} process(es) per "
            f"node ({per_node * nodes} in all on {nodes} node(s)), but {who} started {processes}: "
            f"{how_to_fix}"
        )
