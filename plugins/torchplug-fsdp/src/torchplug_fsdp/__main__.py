"""``python -m torchplug_fsdp consolidate CHECKPOINT_DIR OUTPUT.ckpt`` (also ``torchplug-fsdp consolidate``):
one ordinary checkpoint file from a sharded checkpoint directory, in one process without a process group."""

from __future__ import annotations

import argparse
import sys

from torchplug import MisconfigurationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchplug-fsdp", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    consolidate = commands.add_parser(
        "consolidate",
        help="write a sharded checkpoint directory as one checkpoint file (full state_dict, loadable anywhere)",
    )
    consolidate.add_argument("source", help="the sharded checkpoint directory (e.g. epoch=0-step=100.ckpt)")
    consolidate.add_argument("destination", help="the file to write (e.g. consolidated.ckpt)")
    args = parser.parse_args(argv)

    from torchplug_fsdp import consolidate_checkpoint

    try:
        checkpoint = consolidate_checkpoint(args.source, args.destination)
    except MisconfigurationError as err:
        print(f"torchplug-fsdp: {err}", file=sys.stderr)
        return 1
    tensors = len(checkpoint.get("state_dict", {}))
    print(f"wrote {args.destination}: {tensors} tensors in state_dict, "
          f"{len(checkpoint.get('optimizer_states', []))} optimizer state(s), {len(checkpoint.get('ranks', []))} rank(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
