"""The Linear-op registry: QLinear and Recipe dispatch on the op config's type, the core imports no baseline, the MX
core (quantization/mx) imports nothing else of the package, and a new op is a config class plus a registered
function."""
import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import quantization
from configs import load_config
from quantization import (QLinear, QuantizerConfig, Recipe, TsengConfig, get_recipe, linear_op, linear_ops,
                          register_linear_op, register_recipe, tseng_linear)
from quantization import recipes, registry
from quantization.mx.testing import assert_bitwise_equal

PACKAGE = Path(quantization.__file__).parent


@dataclass(frozen=True)
class ToyConfig:
    """A made-up method: the forward GEMM uses ``scale`` x W."""

    scale: float = 2.0


def toy_linear(x, weight, bias, config):
    return F.linear(x, weight * config.scale, bias)


@pytest.fixture
def toy(monkeypatch):
    """The toy op and a ``toy`` recipe registered for one test (the registries are restored afterwards)."""
    monkeypatch.setattr(registry, "_OPS", dict(registry._OPS))
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    register_linear_op("toy", ToyConfig)(toy_linear)
    return register_recipe(Recipe("toy", op=ToyConfig(3.0)))


def test_a_registered_op_runs_in_qlinear_without_touching_the_core(toy):
    layer = QLinear(64, 48, recipe="toy")
    x = torch.randn(5, 64, requires_grad=True)
    y = layer(x)
    reference = F.linear(x, 3.0 * layer.weight, layer.bias)
    assert_bitwise_equal(y, reference)
    y.sum().backward()
    assert torch.allclose(layer.weight.grad, 3.0 * x.sum(0).expand(48, 64).detach())
    assert toy.scheme == "toy" and toy.toy == ToyConfig(3.0) and toy.tseng is None and toy.quantizes_anything
    assert get_recipe("tseng").toy is None


def test_a_registered_op_reads_and_writes_under_its_name(toy):
    data = toy.to_dict()
    assert list(data)[-4:] == ["tseng", "wang", "int4", "toy"] and data["toy"] == {"scale": 3.0}
    assert Recipe.from_dict(data) == toy
    assert Recipe("t", toy=ToyConfig()) == Recipe("t", op=ToyConfig())
    with pytest.raises(ValueError, match=r"unknown keys \['size'\] in toy; valid keys: scale"):
        Recipe.from_dict({"name": "t", "toy": {"size": 1}})
    method = load_config([], ["method.recipe={toy: {scale: 0.5}}"]).method
    assert method.resolved.op == ToyConfig(0.5)
    with pytest.raises(ValueError, match="toy brings its own quantizers and combines with no other; also set: q2"):
        Recipe("t", toy=ToyConfig(), q2=QuantizerConfig())


def test_every_baseline_is_registered_on_import_in_the_order_of_its_recipe_keys():
    assert [(name, op.config_cls.__name__) for name, op in linear_ops().items()] == [
        ("tseng", "TsengConfig"), ("wang", "WangConfig"), ("int4", "Int4Config")]
    for name, op in linear_ops().items():
        recipe = get_recipe(name)
        assert type(recipe.op) is op.config_cls and linear_op(recipe.op) is op
    # config.yaml files of earlier runs (results/) spell every recipe this way; resuming compares them key by key
    assert list(get_recipe("tetrajet").to_dict()) == [
        "name", "q1", "q2", "q3", "q4", "q5", "q6", "double_quant", "qema_beta", "qramping", "dampen", "freeze",
        "tseng", "wang", "int4"]


def _imported_modules(path: Path) -> set[str]:
    """The quantization submodules that ``path`` imports (``from .x import``, ``from quantization.x import``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.startswith("quantization"):
                names.add(module.removeprefix("quantization").lstrip(".").split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("quantization."))
    return names


def _registering_modules(function: str) -> set[str]:
    """The modules of the package that call (or decorate with) ``function``: register_linear_op or
    register_method_config."""
    found = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == function:
                found.add(path.stem)
    return found


@pytest.mark.parametrize("core", ["linear", "recipes"])
def test_the_core_imports_no_baseline_and_no_method(core):
    baselines = _registering_modules("register_linear_op")
    methods = _registering_modules("register_method_config")
    assert {"tseng", "wang", "int4"} <= baselines and {"dampen", "freeze", "ramping"} <= methods
    assert not _imported_modules(PACKAGE / f"{core}.py") & (baselines | methods | {"ema"})


def _outside_mx(module: str) -> bool:
    """Whether an absolute module name is part of quantization but not of quantization.mx."""
    return (module == "quantization" or module.startswith("quantization.")) and not (
        module == "quantization.mx" or module.startswith("quantization.mx."))


def _imports_outside_mx(path: Path) -> list[str]:
    """The imports of ``path`` (a module of quantization/mx) that reach the package outside mx/: relative ones of
    level 2 or more, absolute ones of quantization other than quantization.mx."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 2 or (node.level == 0 and _outside_mx(node.module or "")):
                found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _outside_mx(alias.name)]
    return found


def test_the_mx_core_imports_nothing_else_of_the_package():
    modules = sorted((PACKAGE / "mx").glob("*.py"))
    assert {"formats", "reference", "kernels", "ops"} <= {path.stem for path in modules}
    assert {path.name: _imports_outside_mx(path) for path in modules} == {path.name: [] for path in modules}


@pytest.mark.slow
def test_the_mx_core_runs_alone(tmp_path):
    """A copy of quantization/mx, without the rest of the package, imports and quantizes (the parent's __init__
    would load everything, so the copy is imported as a top-level package)."""
    shutil.copytree(PACKAGE / "mx", tmp_path / "mxcore", ignore=shutil.ignore_patterns("__pycache__"))
    values = [1.0, 2.9, -0.2, 0.1] * 8
    code = f"import torch, mxcore; print(mxcore.quantize(torch.tensor({values})).tolist())"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(quantization.quantize(torch.tensor(values)).tolist())


def test_layer_state_is_built_by_its_registered_factory(monkeypatch):
    monkeypatch.setattr(registry, "_LAYER_STATES", dict(registry._LAYER_STATES))
    registry.register_layer_state("toy_state", lambda recipe, weight: torch.nn.Linear(1, 1) if recipe.name == "bf16"
                                  else None)
    assert isinstance(QLinear(32, 4, recipe="bf16").toy_state, torch.nn.Linear)
    assert QLinear(32, 4, recipe="tetrajet").toy_state is None
    assert "toy_state.weight" in QLinear(32, 4, recipe="bf16").state_dict()
    assert QLinear(32, 4, recipe="tetrajet_freeze").freeze_state is not None
    with pytest.raises(ValueError, match="'toy_state' is already registered"):
        registry.register_layer_state("toy_state", lambda recipe, weight: None)
    with pytest.raises(ValueError, match="must be an identifier"):
        registry.register_layer_state("a-b", lambda recipe, weight: None)


def test_registry_errors_name_the_bad_value_and_the_choices(monkeypatch):
    monkeypatch.setattr(registry, "_OPS", dict(registry._OPS))
    with pytest.raises(TypeError, match=r"recipe 'x': op: ToyConfig is not the config of a registered linear op "
                                        r"\(tseng: TsengConfig, wang: WangConfig, int4: Int4Config\)"):
        Recipe("x", op=ToyConfig())
    with pytest.raises(ValueError, match="'tseng' is already registered"):
        register_linear_op("tseng", ToyConfig)
    with pytest.raises(ValueError, match="'dampen' must be an identifier and not a recipe field"):
        register_linear_op("dampen", ToyConfig)
    with pytest.raises(TypeError, match="must be a dataclass"):
        register_linear_op("plain", dict)
    with pytest.raises(TypeError, match="TsengConfig is already the config of linear op 'tseng'"):
        register_linear_op("tseng2", TsengConfig)
    with pytest.raises(ValueError, match="recipe name 'tseng' is already registered"):
        register_recipe(Recipe("tseng"))


def test_replace_under_the_op_name_replaces_the_op():
    tseng = get_recipe("tseng")
    assert tseng.replace(name="t", tseng=None).op is None
    assert tseng.replace(tseng=TsengConfig(hadamard_block=32)).op == TsengConfig(hadamard_block=32)
    with pytest.raises(ValueError, match="tseng brings its own quantizers and combines with no other; also set: wang"):
        tseng.replace(wang=quantization.WangConfig())


def test_qlinear_calls_the_function_registered_for_the_config_type(monkeypatch):
    calls = []

    def recording(*args):
        calls.append(args)
        return tseng_linear(*args)

    monkeypatch.setitem(registry._OPS, "tseng", registry.LinearOp("tseng", TsengConfig, recording))
    layer = QLinear(32, 16, recipe="tseng")
    layer(torch.randn(4, 32))
    assert len(calls) == 1 and calls[0][1] is layer.weight and calls[0][3] is layer.recipe.op
