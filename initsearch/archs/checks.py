"""Option checks shared by the architectures: each raises ValueError naming the option, the bad
value and what is allowed (``build_model`` turns it into a one-line usage error)."""
from __future__ import annotations

from typing import Any, Iterable


def positive_int(name: str, value: Any, note: str = "") -> int:
    """``value`` if it is an integer >= 1 (``note``, e.g. " (16 in the paper)", is appended)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{note}, not {value!r}")
    return value


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def subset(name: str, value: Any, allowed: set[int]) -> tuple[int, ...]:
    """``value`` as a tuple if it is a list/tuple of items from ``allowed``."""
    if not isinstance(value, (tuple, list)) or not set(value) <= allowed:
        raise ValueError(f"{name} must be a subset of {tuple(sorted(allowed))}, not {value!r}")
    return tuple(value)
