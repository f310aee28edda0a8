"""How a method's setting moves over training (the dampening weight and the freezing threshold of Nagel et al. 2022)."""
from __future__ import annotations

import math


def cosine_anneal(start: float, final: float, progress: float, anneal_start: float = 0.0) -> float:
    """``start`` until ``anneal_start`` (a fraction of training), then a cosine from ``start`` to ``final`` at
    progress 1 (the schedule Nagel et al. 2022 use for the dampening weight and the freezing threshold)."""
    if progress <= anneal_start:
        return start
    t = min((progress - anneal_start) / (1.0 - anneal_start), 1.0)
    return final + 0.5 * (start - final) * (1.0 + math.cos(math.pi * t))
