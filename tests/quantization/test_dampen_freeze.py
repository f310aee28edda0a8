"""The Dampen and Freeze baselines (Nagel et al. 2022) on MX weights: constructed cases with known answers."""
import copy

import pytest
import torch
from torch import nn

from quantization import QLinear, QuantizerConfig, get_recipe
from quantization.dampen import DampenConfig, dampen_loss
from quantization.freeze import FreezeConfig, _threshold, attach_freeze, frozen_share


def _layer(values, recipe):
    """A 1 x 32 QLinear whose first weights are ``values`` (6.0 first fixes the TetraJet block scale at 1)."""
    layer = QLinear(32, 1, bias=False, recipe=recipe)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, :len(values)] = torch.tensor(values)
    return layer


@pytest.mark.parametrize("aggregation,divisor", [("kernel_mean", 32), ("mean", 32), ("sum", 1)])
def test_dampen_loss_value_and_gradient(aggregation, divisor):
    recipe = get_recipe("tetrajet_dampen")
    layer = _layer([6.0, 1.125, -0.375, 2.625], recipe.replace(dampen=DampenConfig(aggregation=aggregation)))
    model = nn.Sequential(layer, QLinear(1, 32, recipe="tetrajet"))  # a layer without Dampen is not counted
    loss = dampen_loss(model, 0.5)
    # nearest grid values 6, 1, -0.5, 3: squared distances 0, 1/64, 1/64, 9/64; one output row of 32 inputs, so
    # kernel_mean (sum / in_features) and mean agree here
    assert loss.item() == 0.5 * 11 / 64 / divisor
    loss.backward()
    grad = layer.weight.grad[0, :5].tolist()
    assert grad == [g / divisor for g in (0.0, 0.125, 0.125, -0.375, 0.0)]  # 2 lambda (w - Q(w)), toward the grid


def test_dampen_kernel_mean_divides_each_layer_by_its_input_width():
    recipe = get_recipe("tetrajet_dampen")
    wide, narrow = QLinear(64, 2, bias=False, recipe=recipe), QLinear(32, 2, bias=False, recipe=recipe)
    summed = {name: dampen_loss(nn.Sequential(layer), 1.0) for name, layer in (("wide", wide), ("narrow", narrow))}
    for layer in (wide, narrow):
        layer.recipe = recipe.replace(dampen=DampenConfig(aggregation="sum"))
    assert torch.equal(summed["wide"] * 64, dampen_loss(nn.Sequential(wide), 1.0))
    assert torch.equal(summed["narrow"] * 32, dampen_loss(nn.Sequential(narrow), 1.0))
    both = dampen_loss(nn.Sequential(wide, narrow), 1.0)
    assert torch.equal(both, dampen_loss(nn.Sequential(wide), 1.0) + dampen_loss(nn.Sequential(narrow), 1.0))


def test_dampen_clips_like_the_quantizer():
    recipe = get_recipe("tetrajet_dampen").replace(q2=QuantizerConfig(scale_rule="floor"))
    layer = _layer([31.0, 9.0], recipe)  # OCP scale 4: 31 clips to 24 (= Q(31)), 9 -> 8
    loss = dampen_loss(nn.Sequential(layer), 1.0)
    assert loss.item() == 1.0 / 32  # kernel_mean: the layer's 32 inputs
    loss.backward()
    assert layer.weight.grad[0, :2].tolist() == [0.0, 2.0 / 32]  # no gradient through the clipped weight


def test_dampen_weight_schedule_and_errors():
    config = DampenConfig()  # Nagel et al.'s scripts: 0 until a quarter of training, then a cosine to 0.1
    assert (config.weight_at(0.0), config.weight_at(0.25), config.weight_at(1.0)) == (0.0, 0.0, 0.1)
    assert config.weight_at(0.625) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="dampen.aggregation must be one of kernel_mean, mean, sum, got 'max'"):
        DampenConfig(aggregation="max")
    assert DampenConfig(anneal_start=0.5).weight_at(0.4) == 0.0
    with pytest.raises(ValueError, match="no QLinear whose recipe sets 'dampen'"):
        dampen_loss(nn.Sequential(QLinear(32, 2, recipe="tetrajet")), 0.1)
    with pytest.raises(ValueError, match="dampen acts on quantized weights, but the weight quantizer q2 is off"):
        get_recipe("tetrajet_dampen").replace(q2=None)


def test_freeze_tracks_reversing_flips_and_freezes_at_the_rounded_ema_position():
    config = FreezeConfig(momentum=0.5, threshold_start=0.3, threshold_final=0.3)
    layer = _layer([6.0], get_recipe("tetrajet_freeze").replace(freeze=config))
    state = layer.freeze_state
    threshold = torch.tensor(0.3)
    oscillating = [1.125, 1.375, 1.125, 1.375, 1.125]  # grid positions 2, 3, 2, 3, 2: flips that reverse
    climbing = [0.625, 1.125, 1.625, 2.125, 2.625]  # positions 1, 2, 3, 4, 5: flips in one direction
    for t in range(5):
        with torch.no_grad():  # what an optimizer step would write
            layer.weight[0, 1], layer.weight[0, 2] = oscillating[t], climbing[t]
        state.update(layer.weight, layer.recipe.q2, config, threshold)
        if t == 1:
            assert state.flip_dir[0, 1:3].tolist() == [1, 1] and state.osc_freq[0, 1] == 0
        if t == 2:  # second flip of weight 1 reverses the first: f = 0.5 > 0.3 -> frozen at round(2.5) = 2 -> 1.0
            assert state.osc_freq[0, 1] == 0.5 and state.osc_freq[0, 2] == 0
        if t >= 2:
            assert state.frozen[0].nonzero().flatten().tolist() == [1]
            assert layer.weight[0, 1] == 1.0 and state.frozen_value[0, 1] == 1.0  # held against later writes
        assert layer.weight[0, 2] == climbing[t]
    assert int(state.updates) == 5 and state.code_prev[0, 2] == 5


def test_freeze_threshold_schedule_on_the_device_matches_the_config():
    config = FreezeConfig(anneal_start=0.2)
    for done in (0, 10, 37, 100, 150):
        got = _threshold(config, torch.tensor(done), 100).item()
        assert got == pytest.approx(config.threshold_at(min(done / 100, 1.0)), rel=1e-6)
    assert config.threshold_at(0.0) == 0.1 and config.threshold_at(1.0) == pytest.approx(0.01)


def _model(seed=0):
    torch.manual_seed(seed)
    recipe = get_recipe("tetrajet_freeze").replace(freeze=FreezeConfig(momentum=0.3, threshold_start=0.4,
                                                                       threshold_final=0.4))
    return nn.Sequential(QLinear(32, 64, recipe=recipe), nn.GELU(), QLinear(64, 8, recipe=recipe))


def _train(model, optimizer, steps, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(32, 32, generator=g)).square().mean().backward()
        optimizer.step()
        history.append(model[0].weight.detach().clone())
    return history


def test_attached_freeze_holds_frozen_weights_and_resumes():
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    attach_freeze(model, optimizer, total_steps=40)
    _train(model, optimizer, 12, seed=1)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    history = _train(model, optimizer, 6, seed=2)
    frozen = model[0].freeze_state.frozen
    assert 0 < frozen_share(model) < 1
    assert torch.equal(history[-1][frozen], model[0].freeze_state.frozen_value[frozen])
    early = saved[0]["0.freeze_state.frozen"]
    assert torch.equal(history[0][early], history[-1][early])  # frozen before: did not move
    assert not torch.equal(history[0][~frozen], history[-1][~frozen])  # the others train

    resumed = _model(seed=9)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=3e-2)
    resumed.load_state_dict(saved[0])
    resumed_opt.load_state_dict(saved[1])
    attach_freeze(resumed, resumed_opt, total_steps=40)
    _train(resumed, resumed_opt, 6, seed=2)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_freeze_errors():
    model = nn.Sequential(QLinear(32, 4, recipe="tetrajet"))
    with pytest.raises(ValueError, match="no QLinear whose recipe sets 'freeze'"):
        attach_freeze(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10)
    with pytest.raises(ValueError, match="total_steps must be at least 1, got 0"):
        attach_freeze(_model(), torch.optim.SGD(_model().parameters(), lr=0.1), total_steps=0)
    with pytest.raises(ValueError, match=r"freeze.momentum must be in \(0, 1\], got 0"):
        FreezeConfig(momentum=0)
