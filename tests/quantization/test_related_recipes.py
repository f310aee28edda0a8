"""The Tseng et al. and Wang et al. recipes as QLinear recipes: same op as their standalone functions, and checked."""
import pytest
import torch

from quantization import (QLinear, Recipe, TsengConfig, WangConfig, get_recipe, int4_linear, tseng_linear,
                          wang_linear)
from quantization.mx.testing import assert_bitwise_equal


@pytest.mark.parametrize("name,op", [("tseng", tseng_linear), ("wang", wang_linear), ("int4", int4_linear)])
def test_qlinear_runs_the_recipe_op(name, op):
    recipe = get_recipe(name)
    torch.manual_seed(0)
    layer = QLinear(64, 96, recipe=recipe)
    x = torch.randn(3, 40, 64)
    dy = torch.randn(3, 40, 96)
    results = []
    for fn in (layer, lambda t: op(t, layer.weight, layer.bias, getattr(recipe, name))):
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        y = fn(xi)
        torch.manual_seed(5)
        y.backward(dy)
        results.append((y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*results):
        assert_bitwise_equal(a, b)
    assert layer.recipe.scheme == name and layer.recipe.quantizes_anything


def test_schemes_combine_with_nothing_else():
    with pytest.raises(ValueError, match="tseng brings its own quantizers and combines with no other; also set: wang"):
        Recipe("x", tseng=TsengConfig(), wang=WangConfig())
    with pytest.raises(ValueError, match="also set: q1"):
        get_recipe("tetrajet").replace(name="x", tseng=TsengConfig())
    with pytest.raises(TypeError, match="wang must be a WangConfig"):
        Recipe("x", wang=TsengConfig())


def test_from_dict_reads_nested_scheme_configs():
    recipe = Recipe.from_dict({"name": "t", "tseng": {"hadamard_block": 32}})
    assert recipe.tseng == TsengConfig(hadamard_block=32)
    with pytest.raises(ValueError, match=r"unknown keys \['block'\] in wang"):
        Recipe.from_dict({"name": "w", "wang": {"block": 3}})
