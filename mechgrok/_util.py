"""Small helpers shared by the trainer, probes and sweep (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def first_step(steps: Sequence[int] | Any, cond: Sequence[bool] | Any) -> int | None:
    """The first step at which ``cond`` holds (None if never).

    ``steps`` and ``cond`` are aligned 1-d sequences, numpy arrays or torch tensors; a comparison
    with a NaN value (a step that was not evaluated) is False, so such steps are skipped.
    """
    hit = np.flatnonzero(np.asarray(cond, dtype=bool))
    return int(np.asarray(steps)[hit[0]]) if hit.size else None


def format_step(step: int | None, width: int = 0) -> str:
    """A step for people: ``12,345``, or ``never`` for an event that did not happen (right-aligned
    to ``width`` characters)."""
    return format("never" if step is None else f"{int(step):,}", f">{width}")
