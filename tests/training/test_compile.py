"""torch.compile of quantized DeiTs: no graph break, and compiled forward + backward give the eager bits."""
import copy

import pytest
import torch

from models import build_model
from quantization import get_recipe
from quantization.ema import qema_layers
from quantization.ema import QEMA_WARMUP_UPDATES

SMALL_DEIT = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                  drop_path_rate=0.1)
RECIPES = ["tetrajet", "tetrajet_qema", "tetrajet_qramping", "microscaling"]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("deit_tiny_patch16_224", get_recipe(name), **SMALL_DEIT)
    with torch.no_grad():
        for layer in qema_layers(model):  # past the warm-up, with an EMA that differs from the weight
            layer.qema_state.ema_updates.fill_(QEMA_WARMUP_UPDATES)
            layer.qema_state.weight_ema.mul_(0.9)
    return model


def _loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x).float().square().mean()


@pytest.mark.parametrize("name", RECIPES)
def test_no_graph_breaks(name):
    model = _model(name)
    explanation = torch._dynamo.explain(_loss)(model, torch.randn(4, 1, 28, 28))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", RECIPES)
def test_fullgraph_aot_eager_forward_backward_equals_eager(name):
    """Bit for bit, drop path and the stochastic backward quantizers included, from the same random state."""
    torch._dynamo.reset()
    model = _model(name)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 1, 28, 28)
    results = []
    for module in (model, compiled):
        torch.manual_seed(5)
        loss = _loss(module, x)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in module.parameters()])
    for eager, traced in zip(*results):
        assert torch.equal(eager, traced)


def test_train_compile_aot_eager_trains_as_eager(tmp_path):
    """main.py with train.compile: one tiny epoch (drop path on) ends in the eager run's model and optimizer."""
    import main
    from tests.helpers import assert_states_equal, tiny_config
    from training import load

    states = []
    for mode in ("eager", "aot_eager"):
        torch._dynamo.reset()
        main.run(tiny_config(tmp_path / mode, "model.drop_path=0.1", f"train.compile={mode}"))
        state = load(tmp_path / mode / "checkpoint_last.pth")
        states.append({key: state[key] for key in ("model", "optimizer")})
    assert_states_equal(*states)


def test_train_compile_names_the_bad_value_and_recipes_it_cannot_trace(tmp_path):
    from configs import ConfigError
    from tests.helpers import tiny_config

    with pytest.raises(ConfigError, match="train.compile 'fast'; valid choices: eager, inductor, aot_eager"):
        tiny_config(tmp_path, "train.compile=fast")
    with pytest.raises(ConfigError, match="cannot trace recipe 'tseng'"):
        tiny_config(tmp_path, "train.compile=inductor", method="tseng")
