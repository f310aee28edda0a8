"""train.compile: the training model traced whole by torch.compile."""
from __future__ import annotations

import torch
from torch import nn


def compile_model(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(model, fullgraph=True, backend=backend)``; a graph break is an error, not a silent slowdown.

    Under inductor, random numbers are drawn as in eager mode (``fallback_random``): drop path and the stochastic
    quantizers' seeds then come from the same generator calls as an eager run, so the same random state gives the
    same training."""
    if backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    return torch.compile(model, fullgraph=True, backend=backend)
