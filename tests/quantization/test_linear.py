"""QLinear and its autograd Function against compositions of reference quantizers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantization import QLinear, Recipe, get_recipe, quantize
from quantization.mx.reference import band_sums
from quantization.mx.testing import assert_bitwise_equal
from quantization.recipes import ROLE_LAYOUTS


def _pair(recipe, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = QLinear(96, 80, bias=bias, recipe=recipe).to(dtype)
    x = torch.randn(3, 37, 96, dtype=dtype, requires_grad=True)  # 111 tokens: a tail of 15 in the 32x1 blocks
    return layer, x


def _q(t, recipe, role, **kw):
    cfg = recipe.quantizer(role)
    if cfg is None:
        return t
    return quantize(t, ROLE_LAYOUTS[role], cfg.fmt, cfg.scale_rule, kw.pop("rounding", cfg.rounding), backend="torch",
                    **kw)


def _expected(recipe, x, w, b, dy):
    """Forward and gradients composed by hand from reference quantizers (seed order Q3, Q4, Q5, Q6)."""
    x2 = x.detach().reshape(-1, x.shape[-1])
    xq, wq = _q(x2, recipe, "q1"), _q(w.detach(), recipe, "q2")
    y = F.linear(xq, wq, None if b is None else b.detach())
    dy2 = dy.reshape(-1, dy.shape[-1])
    w_src = wq if recipe.double_quant else w.detach()
    x_src = xq if recipe.double_quant else x2
    torch.manual_seed(99)
    dx = _q(dy2, recipe, "q3") @ _q(w_src, recipe, "q4")
    dw = _q(dy2, recipe, "q5").t() @ _q(x_src, recipe, "q6")
    # When Q3 and Q5 are one quantizer, the read of dY that feeds both also sums its columns, band by band.
    one_read = recipe.q3 is not None and recipe.q3 == recipe.q5 and recipe.q3.rounding != "ema"
    db = band_sums(dy2).sum(0).to(dy2.dtype) if one_read else dy2.sum(0)
    return y.view(*x.shape[:-1], -1), dx.view(x.shape), dw, db


def _actual(layer, x, dy):
    y = layer(x)
    torch.manual_seed(99)
    y.backward(dy)
    return y, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


@pytest.mark.parametrize("name", ["tetrajet", "microscaling", "tetrajet_only_q1", "tetrajet_only_q4",
                                  "tetrajet_only_q6", "table5_det_doubleq_floor", "table7_e3m0_e2m1"])
def test_matches_composed_reference_quantizers(name):
    recipe = get_recipe(name)
    layer, x = _pair(recipe)
    dy = torch.randn(3, 37, 80)
    got = _actual(layer, x, dy)
    want = _expected(recipe, x, layer.weight, layer.bias, dy)
    for g, w in zip(got, want):
        assert_bitwise_equal(g.detach(), w)


def test_bf16_recipe_is_exactly_nn_linear():
    layer, x = _pair("bf16")
    ref = nn.Linear(96, 80)
    ref.load_state_dict(layer.state_dict())
    x2 = x.detach().clone().requires_grad_()
    dy = torch.randn(3, 37, 80)
    layer(x).backward(dy)
    ref(x2).backward(dy)
    assert_bitwise_equal(layer(x), ref(x2))
    for a, b in ((x.grad, x2.grad), (layer.weight.grad, ref.weight.grad), (layer.bias.grad, ref.bias.grad)):
        assert_bitwise_equal(a, b)


def test_tetrajet_backward_differs_from_straight_through():
    """Sanity: the backward quantizers are really applied (the test above could not tell an identity apart)."""
    layer, x = _pair("tetrajet")
    dy = torch.randn(3, 37, 80)
    layer(x).backward(dy)
    wq = quantize(layer.weight.detach())
    ste = (dy.reshape(-1, 80) @ wq).view(x.shape)
    assert not torch.equal(x.grad, ste)
    assert (x.grad - ste).abs().mean() < 0.25 * ste.abs().mean()


def test_under_bf16_autocast_quantizes_what_the_gemm_sees():
    recipe = get_recipe("tetrajet")
    layer, x = _pair(recipe)
    dy = torch.randn(3, 37, 80, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.manual_seed(99)
    y.backward(dy)
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    want = _expected(recipe, x.to(torch.bfloat16), layer.weight.to(torch.bfloat16), layer.bias.to(torch.bfloat16), dy)
    assert_bitwise_equal(y.detach(), want[0])
    assert_bitwise_equal(x.grad, want[1].float())
    assert_bitwise_equal(layer.weight.grad, want[2].float())


def test_saves_compact_form_for_backward():
    saved = []

    def pack(t):
        saved.append(t)
        return t

    layer, x = _pair("tetrajet", dtype=torch.bfloat16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    tokens = 3 * 37
    sizes = {(tuple(t.shape), t.dtype) for t in saved}
    assert ((tokens, 48), torch.uint8) in sizes  # Q1(X) packed: 96 columns -> 48 bytes
    assert ((tokens, 3), torch.uint8) in sizes  # its E8M0 scales
    assert all(t.dtype == torch.uint8 for t in saved)
    assert sum(t.numel() * t.element_size() for t in saved) < 0.3 * x.numel() * 2 + 0.3 * layer.weight.numel() * 2


def test_microscaling_saves_full_precision_input():
    saved = []
    layer, x = _pair("microscaling")
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    assert any(t.dtype == torch.float32 and t.shape == (111, 96) for t in saved)


def test_no_grad_for_frozen_weight_and_no_bias():
    layer, x = _pair("tetrajet", bias=False)
    layer.weight.requires_grad_(False)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is None


def test_from_linear_and_state_dict_compatibility():
    linear = nn.Linear(64, 32)
    q = QLinear.from_linear(linear, "tetrajet")
    assert torch.equal(q.weight, linear.weight) and torch.equal(q.bias, linear.bias)
    nn.Linear(64, 32).load_state_dict(q.state_dict())
    assert "recipe=tetrajet" in repr(q)


def test_qema_buffer_warmup_and_rounding():
    recipe = get_recipe("tetrajet").replace(name="qema", q2=get_recipe("tetrajet").q2.__class__(rounding="ema"))
    layer, x = _pair(recipe)
    w0 = layer.weight.detach().clone()
    x_eval = x.detach()
    plain = F.linear(quantize(x_eval.reshape(-1, 96)), quantize(w0), layer.bias.detach())
    with torch.no_grad():
        layer.weight.add_(0.01 * torch.randn_like(w0))
    for step in range(10):
        assert_bitwise_equal(layer(x_eval).reshape(-1, 80).detach(),
                             F.linear(quantize(x_eval.reshape(-1, 96)), quantize(layer.weight.detach()),
                                      layer.bias.detach()))
        layer.qema_state.update(layer.weight, 0.9)
    assert int(layer.qema_state.ema_updates) == 10
    ema = w0.clone()
    w = layer.weight.detach()
    for _ in range(10):
        ema = ema.lerp(w, 0.1)
    assert torch.allclose(layer.qema_state.weight_ema, ema)
    with_ema = F.linear(quantize(x_eval.reshape(-1, 96)), quantize(w, rounding="ema", ema=layer.qema_state.weight_ema),
                        layer.bias.detach())
    assert_bitwise_equal(layer(x_eval).reshape(-1, 80).detach(), with_ema)
    assert not torch.equal(with_ema, plain)
    restored = QLinear(96, 80, recipe=recipe)
    restored.load_state_dict(layer.state_dict())
    assert_bitwise_equal(restored(x_eval).detach(), layer(x_eval).detach())


def test_recipe_from_dict_round_trip_and_errors():
    recipe = get_recipe("tetrajet")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({"name": "x", "q7": None})
    with pytest.raises(ValueError, match="valid keys"):
        Recipe.from_dict({"name": "x", "q1": {"fmt": "e2m1", "round": "even"}})
    with pytest.raises(ValueError, match="q2 only"):
        Recipe.from_dict({"name": "x", "q1": {"rounding": "ema"}})


@pytest.mark.parametrize("fwd", ["e2m1", "e3m0"])
@pytest.mark.parametrize("bwd", ["e2m1", "e3m0"])
def test_table7_gradient_format_only_for_the_dy_quantizers(fwd, bwd):
    """Q3 and Q5 quantize dY in the gradient format; Q4 and Q6 re-quantize W and X and keep the forward format."""
    recipe = get_recipe(f"table7_{fwd}_{bwd}")
    assert {role: recipe.quantizer(role).fmt for role in ("q1", "q2", "q3", "q4", "q5", "q6")} == {
        "q1": fwd, "q2": fwd, "q3": bwd, "q4": fwd, "q5": bwd, "q6": fwd}
    assert [recipe.quantizer(role).rounding for role in ("q3", "q4", "q5", "q6")] == ["stochastic"] * 4


@pytest.mark.parametrize("name", ["table7_e2m1_e3m0", "table7_e3m0_e3m0"])
def test_table7_recipes_match_composed_reference_quantizers(name):
    test_matches_composed_reference_quantizers(name)
