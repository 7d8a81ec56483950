"""Precision plugins: number formats for parameters and compute. The ``*-true`` ones are built in."""

from __future__ import annotations


class Precision:
    """Base for precision plugins. Full precision needs no hooks: the core's defaults are its behaviour."""

    @classmethod
    def is_available(cls) -> bool:
        return True


__all__ = ["Precision"]
