"""The MXFP4 simulated-quantized Linear: one autograd Function applying the six quantizers of a recipe."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .amp import autocast_operands
from .mx.ops import MXTensor, dequantize, draw_seeds, quantize_2d, quantize_both_layouts_2d, requantize_2d
from .recipes import BACKWARD_ROLES, ROLE_LAYOUTS, QuantizerConfig, Recipe, get_recipe
from .registry import layer_state_names, layer_states, linear_op


def _quantize(t2d: torch.Tensor, config: QuantizerConfig | None, role: str, *, want_packed: bool = False,
              ema2d: torch.Tensor | None = None, seed: torch.Tensor | None = None):
    """Apply one recipe quantizer to a 2-D tensor; returns (values, packed, scales). None config = pass through."""
    if config is None:
        return t2d, None, None
    return quantize_2d(t2d, ROLE_LAYOUTS[role], config.fmt, config.scale_rule, config.rounding, ema2d=ema2d,
                       want_packed=want_packed, seed=seed)


def _backward_seeds(recipe: Recipe, need_dx: bool, need_dw: bool,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """Seed words of the stochastic backward quantizers that will run: one draw on ``device``, rows in the order
    Q3, Q4, Q5, Q6 (as separate draws of two words each would give them)."""
    needed = {"q3": need_dx, "q4": need_dx, "q5": need_dw, "q6": need_dw}
    roles = [role for role in BACKWARD_ROLES
             if needed[role] and getattr(recipe, role) is not None and getattr(recipe, role).rounding == "stochastic"]
    if not roles:
        return {}
    seeds = draw_seeds(len(roles), device)
    return {role: seeds[i] for i, role in enumerate(roles)}


def _quantize_grad_output(dy: torch.Tensor, recipe: Recipe, need_dx: bool, need_dw: bool, need_db: bool,
                          seeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """Q3(dY) (1x32), Q5(dY) (32x1) and the bias gradient (dY's column sums), None where not needed. When Q3 and
    Q5 are the same quantizer, one read of dY gives all three."""
    q3, q5 = recipe.q3, recipe.q5
    if need_dx and need_dw and q3 is not None and q3 == q5 and q3.rounding != "ema":
        out = quantize_both_layouts_2d(dy, q3.fmt, q3.scale_rule, q3.rounding,
                                       seeds=(seeds.get("q3"), seeds.get("q5")), want_column_sums=need_db)
        return (out[0], out[1], out[2].to(dy.dtype)) if need_db else (*out, None)
    g3 = _quantize(dy, q3, "q3", seed=seeds.get("q3"))[0] if need_dx else None
    g5 = _quantize(dy, q5, "q5", seed=seeds.get("q5"))[0] if need_dw else None
    return g3, g5, dy.sum(0) if need_db else None


def _backward_operand(saved: torch.Tensor, scales: torch.Tensor | None, packed_config: QuantizerConfig | None,
                      config: QuantizerConfig | None, role: str, shape: tuple[int, int], dtype: torch.dtype,
                      seed: torch.Tensor | None) -> torch.Tensor:
    """Q4(W') or Q6(X'): the saved operand (full precision, or the forward's 1x32 packed Q2(W) / Q1(X)) quantized
    by ``config`` in 32x1 blocks; packed operands are dequantized and requantized in one pass."""
    if scales is None:
        return _quantize(saved.contiguous(), config, role, seed=seed)[0]
    mx = MXTensor(saved, scales, torch.Size(shape), dtype, "1x32", packed_config.fmt)
    if config is None or config.rounding == "ema":
        return _quantize(dequantize(mx), config, role, seed=seed)[0]
    return requantize_2d(mx, config.fmt, config.scale_rule, config.rounding, seed=seed)


class MXLinearFunction(torch.autograd.Function):
    """Y = Q1(X) Q2(W)^T + b; dX = Q3(dY) Q4(W'); dW = Q5(dY)^T Q6(X'); db = sum(dY).

    W' / X' are Q2(W) / Q1(X) when ``recipe.double_quant`` (saved for backward in packed 4-bit form), else the
    full-precision W / X. Stochastic quantizers draw their seeds on dY's device in the order Q3, Q4, Q5, Q6.
    ``rounding_target``: what Q2's "ema" rounding compares against (``QLinear.rounding_target``), None for other
    recipes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe,
                rounding_target: torch.Tensor | None):
        in_features = x.shape[-1]
        x2d = x.reshape(-1, in_features).contiguous()
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        pack_x = recipe.double_quant and recipe.q1 is not None and need_dw
        pack_w = recipe.double_quant and recipe.q2 is not None and need_dx
        xq, x_packed, x_scales = _quantize(x2d, recipe.q1, "q1", want_packed=pack_x)
        wq, w_packed, w_scales = _quantize(weight.contiguous(), recipe.q2, "q2", want_packed=pack_w,
                                     ema2d=rounding_target)
        out = F.linear(xq, wq, bias)

        ctx.recipe = recipe
        ctx.x_shape = x.shape
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        ctx.has_bias = bias is not None
        x_saved = (x_packed, x_scales) if pack_x else (x2d if need_dw else None, None)
        w_saved = (w_packed, w_scales) if pack_w else (weight if need_dx else None, None)
        ctx.save_for_backward(*x_saved, *w_saved)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        recipe: Recipe = ctx.recipe
        x_saved, x_scales, w_saved, w_scales = ctx.saved_tensors
        out_features = grad_out.shape[-1]
        dy = grad_out.reshape(-1, out_features).contiguous()
        rows, in_features = dy.shape[0], ctx.x_shape[-1]
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        seeds = _backward_seeds(recipe, need_dx, need_dw, dy.device)
        need_db = ctx.has_bias and ctx.needs_input_grad[2]
        g3, g5, grad_b = _quantize_grad_output(dy, recipe, need_dx, need_dw, need_db, seeds)
        grad_x = grad_w = None
        if need_dx:
            w4 = _backward_operand(w_saved, w_scales, recipe.q2, recipe.q4, "q4", (out_features, in_features),
                                   ctx.w_dtype, seeds.get("q4"))
            grad_x = (g3 @ w4.to(g3.dtype)).view(ctx.x_shape)
        if need_dw:
            x6 = _backward_operand(x_saved, x_scales, recipe.q1, recipe.q6, "q6", (rows, in_features), ctx.x_dtype,
                                   seeds.get("q6"))
            grad_w = g5.t() @ x6.to(g5.dtype)
        return grad_x, grad_w, grad_b, None, None


class QLinear(nn.Linear):
    """nn.Linear whose forward and backward GEMM operands go through the recipe's six MX quantizers, or that runs the
    registered Linear op whose config the recipe holds instead (``recipe.op``: quantization.registry).

    Methods keep their per-layer state in modules registered with quantization.registry.register_layer_state
    (Q-EMA's ``qema_state``, Freeze's ``freeze_state``), so state dicts are nn.Linear's plus those buffers. When
    the weight quantizer rounds with "ema", the one layer state that has a ``rounding_target(weight)`` method
    supplies what it rounds against. Under autocast the operands are cast to the autocast dtype first, so
    quantization sees what the GEMM would see.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, recipe: "str | Recipe" = "tetrajet",
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = get_recipe(recipe)
        self._build_layer_states()

    def _build_layer_states(self) -> None:
        """(Re)build the methods' per-layer states from the current weight and find Q2's rounding-target supplier.
        ValueError if a recipe whose q2 rounds with "ema" gets no, or several, suppliers."""
        suppliers = []
        for attribute, state in layer_states(self.recipe, self.weight).items():
            setattr(self, attribute, state)
            if hasattr(state, "rounding_target"):
                suppliers.append(attribute)
        if len(suppliers) != int(self.recipe.uses_qema):
            expected = "one" if self.recipe.uses_qema else "no"
            raise ValueError(f"recipe {self.recipe.name!r}: {expected} layer state with a rounding_target expected "
                             f"(q2 rounding 'ema' needs Q-EMA's, which quantization.ema registers), got "
                             f"{suppliers or 'none'}")
        self._target_state = suppliers[0] if suppliers else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: "str | Recipe") -> "QLinear":
        """A QLinear carrying ``linear``'s weights (same device and dtype), its methods' states built from them."""
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, recipe=recipe,
                device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(linear.weight)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        q._build_layer_states()
        return q

    def rounding_target(self, weight: torch.Tensor) -> torch.Tensor | None:
        """What Q2's "ema" rounding of ``weight`` compares against, from the layer state that supplies it (Q-EMA's
        EMA once active); None when q2 does not round with "ema"."""
        return None if self._target_state is None else getattr(self, self._target_state).rounding_target(weight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A layer state may name the keys its buffers had in older checkpoints (``legacy_keys``: old -> new name).
        for attribute in layer_state_names():
            state = getattr(self, attribute, None)
            for old, new in getattr(state, "legacy_keys", {}).items():
                if prefix + old in state_dict:
                    state_dict[f"{prefix}{attribute}.{new}"] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def quantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Q2(W) as the forward GEMM uses it: W cast to ``dtype`` (the autocast dtype; None: W's own) and quantized by
        the recipe's q2, with Q-EMA rounding once active; W itself when q2 is off. For measurements (oscillation
        metrics, Q-Ramping calibration, the Dampen target)."""
        weight = self.weight.detach() if dtype is None else self.weight.detach().to(dtype)
        values, _, _ = _quantize(weight.contiguous(), self.recipe.q2, "q2", ema2d=self.rounding_target(weight))
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recipe.quantizes_anything:
            return F.linear(x, self.weight, self.bias)
        if self.recipe.op is not None:  # another paper's op replaces the six quantizers (quantization.registry)
            return linear_op(self.recipe.op).fn(x, self.weight, self.bias, self.recipe.op)
        x, weight, bias = autocast_operands(x, self.weight, self.bias)
        with torch.autocast(x.device.type, enabled=False):
            return MXLinearFunction.apply(x, weight, bias, self.recipe, self.rounding_target(weight))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"
