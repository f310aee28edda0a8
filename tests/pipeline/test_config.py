"""configs/: YAML files + overrides -> RunConfig, with unknown keys and bad values rejected by name."""
import dataclasses

import pytest
import yaml

import configs.loader
from configs import OPTIMIZER_NAMES, ConfigError, config_to_dict, load_config, method_label, parse_override, save_config
from quantization import RECIPES, get_recipe

from tests.helpers import REPO

MODEL_FILES = sorted((REPO / "configs" / "models").glob("*.yaml"))
METHOD_FILES = sorted((REPO / "configs" / "methods").glob("*.yaml"))


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("model_file", MODEL_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method_file", METHOD_FILES, ids=lambda p: p.stem)
def test_every_model_and_method_file_combines_into_a_valid_config(model_file, method_file):
    config = load_config([model_file, method_file])
    assert config.method.resolved.name == method_label(config)


def test_files_merge_in_order_and_overrides_win(tmp_path):
    first = _write(tmp_path, "optim: {lr: 1.0e-3, weight_decay: 0.1}\ndata: {batch_size: 8}\n", "a.yaml")
    second = _write(tmp_path, "optim: {lr: 2.0e-3}\n", "b.yaml")
    config = load_config([first, second], ["data.batch_size=16", "model.timm_kwargs={depth: 2}"])
    assert (config.optim.lr, config.optim.weight_decay, config.data.batch_size) == (2e-3, 0.1, 16)
    assert config.model.timm_kwargs == {"depth": 2}
    assert config.train.epochs == 90  # untouched default


def test_float_written_without_a_dot_is_still_a_number():
    assert load_config([], ["optim.lr=5e-4"]).optim.lr == 5e-4  # YAML 1.1 reads 5e-4 as a string


def test_unknown_key_in_a_file_names_the_file_and_the_valid_keys(tmp_path):
    path = _write(tmp_path, "optim:\n  learning_rate: 1.0e-3\n")
    with pytest.raises(ValueError, match=r"c\.yaml: unknown key 'optim.learning_rate'; valid keys of optim: name, "
                                         r"lr, weight_decay"):
        load_config([path])


def test_unknown_section_and_override_key():
    with pytest.raises(ValueError, match="unknown key 'trainer'; valid keys of the top level: model, method, data"):
        load_config([], ["trainer.epochs=3"])
    with pytest.raises(ValueError, match="override 'train.epoch=3': unknown key 'train.epoch'.*epochs"):
        load_config([], ["train.epoch=3"])


@pytest.mark.parametrize("override,message", [
    ("train.epochs=three", "train.epochs must be an integer, got 'three'"),
    ("train.model_ema=1", "train.model_ema must be true/false, got 1"),
    ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
    ("optim.betas=[0.9]", r"optim.betas must have two numbers"),
    ("train.amp=fp8", "unknown train.amp 'fp8'; valid choices: bf16, fp16, fp32"),
    ("train.device=tpu", "unknown train.device 'tpu'; valid choices: auto, cpu, cuda"),
    ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
    ("optim.sched_interval=iteration", "unknown optim.sched_interval 'iteration'; valid choices: epoch, step"),
    ("optim.scale_warmup_min_lr=yes please", "optim.scale_warmup_min_lr must be true/false"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs must be >= 0, got -1"),
    ("optim.warmup_prefix=true", "optim.warmup_epochs=5 must be below train.epochs=5"),
    ("optim.name=sgd", "unknown optim.name 'sgd'; valid choices: adamw"),
    ("data.dataset=mnist", "unknown data.dataset 'mnist'; valid choices: imagenet, fashion_mnist"),
    ("aug.interpolation=cubic", "unknown aug.interpolation 'cubic'; valid choices: bicubic"),
    ("aug.remode=noise", "unknown aug.remode 'noise'; valid choices: const, rand, pixel"),
    ("aug.mixup_mode=row", "unknown aug.mixup_mode 'row'; valid choices: batch, pair, elem"),
    ("method.recipe=tetrajetx", "unknown recipe 'tetrajetx'; valid choices: bf16"),
    ("method.recipe={base: tetrajet, q7: null}", r"unknown recipe keys \['q7'\]"),
    ("method.recipe={base: tetrajet, q1: {fmt: e2m1, rounding: up}}", "rounding"),
    ("model=3", "model must be a mapping"),
    ("optim.lr", "not of the form section.key=value"),
    ("model.timm_kwargs={depth:6}", r"key 'depth:6' with no value: YAML needs a space after the colon, \{depth: 6\}"),
    ("model.timm_kwargs={depth: null}", "model.timm_kwargs.depth is null"),
    ("model.timm_kwargs={depth: 6", "override 'model.timm_kwargs={depth: 6' is not valid YAML"),
])
def test_bad_values_are_rejected_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [override, "train.epochs=5"] if "warmup_prefix" in override else [override])


def test_fixed_choices_match_what_the_training_code_builds():
    from training.optim import OPTIMIZERS
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


def test_qramping_needs_adamw_and_the_recipe_is_resolved_once(monkeypatch):
    monkeypatch.setattr(configs.loader, "OPTIMIZER_NAMES", ("adamw", "lion"))
    with pytest.raises(ConfigError, match="optim.name 'lion' cannot be used with a Q-Ramping recipe"):
        load_config([], ["method.recipe=tetrajet_qramping", "optim.name=lion"])
    method = load_config([], ["method.recipe={base: tetrajet, q2: null}"]).method
    assert method.resolved is method.resolved and method.resolved.q2 is None


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml' does not exist"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        load_config([_write(tmp_path, "- a\n- b\n")])


def test_recipe_as_base_plus_overrides():
    config = load_config([REPO / "configs" / "methods" / "tetrajet_no_weight_q.yaml"])
    recipe, tetrajet = config.method.resolved, get_recipe("tetrajet")
    assert recipe.name == "tetrajet_no_weight_q" and recipe.q2 is None
    assert recipe.replace(name="tetrajet", q2=tetrajet.q2) == tetrajet


def test_named_recipes_are_selectable_by_override():
    for name in RECIPES:
        assert load_config([], [f"method.recipe={name}"]).method.resolved is RECIPES[name]


def test_saved_config_reproduces_the_run_config(tmp_path):
    config = load_config([REPO / "configs" / "quickstart.yaml", REPO / "configs" / "methods" / "tetrajet.yaml"])
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["method"]["recipe"] == get_recipe("tetrajet").to_dict()  # written out in full
    reloaded = load_config([tmp_path / "config.yaml"])
    assert reloaded.method.resolved == config.method.resolved
    assert dataclasses.replace(reloaded, method=config.method) == config
    assert config_to_dict(reloaded) == saved


def test_parse_override_nests_dotted_keys():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("data.path=") == {"data": {"path": None}}
