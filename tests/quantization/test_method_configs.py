"""The method-config registry: a training-side method's settings are one registered config class, carried by every
recipe under its key, with no edit to recipes.py; the key order of Recipe.to_dict (and so of config.yaml) is fixed."""
from dataclasses import dataclass

import pytest
import yaml

from configs import load_config
from quantization import (DampenConfig, FreezeConfig, QRampingConfig, Recipe, get_recipe, method_configs,
                          register_method_config, register_recipe)
from quantization import recipes, registry
from tests.helpers import REPO


@dataclass(frozen=True)
class ToyMethodConfig:
    """A made-up training-side method with one setting."""

    strength: float = 0.5


@dataclass(frozen=True)
class OtherConfig:
    """Another made-up config, for the registrations that must fail."""


@pytest.fixture
def toy(monkeypatch):
    """The toy method (between Q-Ramping and Dampen in the key order) and a ``tetrajet_toy`` recipe, registered for
    one test (the registries are restored afterwards)."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    register_method_config("toy", ToyMethodConfig, position=15)
    return register_recipe(get_recipe("tetrajet").replace(name="tetrajet_toy", toy=ToyMethodConfig(2.0)))


def test_the_builtin_methods_keep_their_keys_and_order():
    assert [(name, entry.config_cls) for name, entry in method_configs().items()] == [
        ("qramping", QRampingConfig), ("dampen", DampenConfig), ("freeze", FreezeConfig)]
    for name in method_configs():
        recipe = get_recipe(f"tetrajet_{name}")
        assert recipe.method_config(name) == method_configs()[name].config_cls()
        assert [other for other in method_configs() if recipe.method_config(other) is not None] == [name]
    assert get_recipe("tetrajet").methods == () and get_recipe("tetrajet").method_config("dampen") is None


def test_a_method_registered_outside_recipes_round_trips(toy):
    assert toy.method_config("toy") == ToyMethodConfig(2.0) and toy.method_config("dampen") is None
    data = toy.to_dict()
    assert list(data)[9:] == ["qramping", "toy", "dampen", "freeze", "tseng", "wang", "int4"]
    assert data["toy"] == {"strength": 2.0}
    assert Recipe.from_dict(data) == toy
    assert Recipe.from_dict(get_recipe("tetrajet").to_dict()).method_config("toy") is None
    both = toy.replace(dampen=DampenConfig())
    assert both.methods == (ToyMethodConfig(2.0), DampenConfig())  # in the registered order, whatever was given first
    assert both.replace(toy=None).methods == (DampenConfig(),)
    method = load_config([], ["method.recipe={base: tetrajet_toy, toy: {strength: 3}}"]).method
    assert method.resolved.method_config("toy") == ToyMethodConfig(3.0)
    with pytest.raises(ValueError, match=r"unknown keys \['size'\] in toy; valid keys: strength"):
        Recipe.from_dict({**data, "toy": {"size": 1}})
    with pytest.raises(ValueError, match="'tetrajet_toy': toy acts on quantized weights, but the weight quantizer q2"):
        toy.replace(q2=None)


def test_method_registration_errors_name_the_clash(toy):
    with pytest.raises(TypeError, match=r"recipe 't': toy must be a ToyMethodConfig or None, got 3"):
        Recipe("t", toy=3)
    with pytest.raises(TypeError, match=r"recipe 't': methods: int is not the config of a registered method"):
        Recipe("t", methods=(3,))
    with pytest.raises(ValueError, match="unknown method 'mine'; valid choices: qramping, toy, dampen, freeze"):
        toy.method_config("mine")
    with pytest.raises(ValueError, match="position 15 is already held by method 'toy'"):
        register_method_config("other", OtherConfig, position=15)
    with pytest.raises(TypeError, match="ToyMethodConfig is already the config of method 'toy'"):
        register_method_config("other", ToyMethodConfig, position=16)
    for name in ("toy", "q2", "methods", "tseng"):
        with pytest.raises(ValueError, match=f"'{name}' "):
            register_method_config(name, OtherConfig, position=16)
    with pytest.raises(ValueError, match="'toy' must be an identifier and not a recipe field"):
        registry.register_linear_op("toy", OtherConfig)


def test_committed_run_configs_read_back_to_the_same_recipe_keys():
    """Every results/**/config.yaml but the superseded ones (written before DampenConfig had ``aggregation``)."""
    paths = [p for p in sorted((REPO / "results").rglob("config.yaml")) if "superseded" not in p.parts]
    assert paths
    for path in paths:
        data = yaml.safe_load(path.read_text())["method"]["recipe"]
        written = Recipe.from_dict(data).to_dict()
        assert list(written) == list(data) and written == data, path
