"""SLURM's compressed host lists (``node[01-04,07]``, ``a[1-2],b3``) expanded the way ``scontrol show hostnames`` does."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Every host named by a SLURM node list, in order; zero padding is kept (``n[08-10]`` → n08, n09, n10).

    Brackets may appear several times in one name (``rack[1-2]-n[1-2]``); the rightmost varies fastest.
    """
    hosts: list[str] = []
    for part in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_name(part, nodelist))
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a node list, without expanding the rest."""
    parts = _split_top_level(nodelist.strip())
    hosts = _expand_name(parts[0], nodelist, limit=1) if parts else []
    if not hosts:
        raise ValueError(f"SLURM node list {nodelist!r} names no host")
    return hosts[0]


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_name(name: str, whole: str, limit: int | None = None) -> list[str]:
    open_at = name.find("[")
    if open_at < 0:
        if "]" in name:
            raise ValueError(f"SLURM node list {whole!r}: unbalanced ']' in {name!r}")
        return [name]
    close_at = name.find("]", open_at)
    if close_at < 0:
        raise ValueError(f"SLURM node list {whole!r}: unbalanced '[' in {name!r}")
    prefix, body, rest = name[:open_at], name[open_at + 1 : close_at], name[close_at + 1 :]
    tails = _expand_name(rest, whole, limit) if rest else [""]
    out: list[str] = []
    for item in body.split(","):
        match = _RANGE.match(item.strip())
        if not match:
            raise ValueError(f"SLURM node list {whole!r}: cannot read the range {item!r} in {name!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"SLURM node list {whole!r}: the range {item!r} runs backwards")
        width = len(low)
        for number in range(int(low), int(high) + 1):
            for tail in tails:
                out.append(f"{prefix}{number:0{width}d}{tail}")
                if limit is not None and len(out) >= limit:
                    return out
    return out
