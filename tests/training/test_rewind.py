"""training.rewound: steps taken inside the block are taken back, state dicts and random generators alike."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from training import rewound


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_state_dicts_and_generators_come_back_also_after_an_error():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg = optimizer.state[model.weight]["exp_avg"].clone()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = _draws()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    for fail in (False, True):
        with pytest.raises(RuntimeError) if fail else rewound([]):
            with rewound([model, optimizer]):
                _draws()
                model(torch.randn(2, 4)).sum().backward()
                optimizer.step()
                if fail:
                    raise RuntimeError("a calibration step failed")
        for key, value in before.items():
            assert torch.equal(model.state_dict()[key], value), key
        assert torch.equal(optimizer.state[model.weight]["exp_avg"], exp_avg)
    assert _draws() == expected
