"""Run some training steps and take them back: what a method's calibration (Q-Ramping's) needs from the loop.

``rewound(objects)`` copies the state dicts of ``objects`` (model, optimizer, grad scaler, ...) in memory, on their
own devices, together with every random generator's state, and restores them all when the block ends, so that the
run after a calibration is the run without it but for what the calibration then sets::

    with rewound([model, optimizer, scaler]):
        for i in range(calibration_steps):
            train_step(i)
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence

from .checkpoint import rng_state, set_rng_state


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> object: ...


@contextmanager
def rewound(objects: Sequence[Stateful]) -> Iterator[None]:
    """Restore the state dicts of ``objects`` and the random generators, as they were on entry, on exit (also when
    the block raises)."""
    objects = list(objects)
    states = [copy.deepcopy(obj.state_dict()) for obj in objects]
    generators = rng_state()
    try:
        yield
    finally:
        for obj, state in zip(objects, states):
            obj.load_state_dict(state)
        set_rng_state(generators)
