"""Bad input gets a clear error naming the value and the valid choices."""
import pytest
import torch

from quantization import QLinear, get_recipe, quantize, quantize_packed
from quantization.recipes import QuantizerConfig


@pytest.mark.parametrize("kwargs,match", [
    (dict(fmt="e5m2x"), r"unknown element format 'e5m2x'; valid choices: e1m2, e2m1, e3m0"),
    (dict(scale_rule="round"), r"unknown scale rule 'round'; valid choices: floor, rceil"),
    (dict(rounding="up"), r"unknown rounding 'up'; valid choices: ema, even, nearest, stochastic"),
    (dict(layout="16x1"), r"unknown layout '16x1'; valid choices: 1x32, 32x1"),
    (dict(backend="cuda"), r"unknown backend 'cuda'; valid choices: auto, torch, triton"),
    (dict(rounding="ema"), r"needs the EMA tensor"),
    (dict(rounding="ema", ema=torch.zeros(3)), r"ema has shape \(3,\) but x has shape \(4, 40\)"),
])
def test_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(torch.randn(4, 40), **kwargs)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.uint8, torch.bool, torch.float64])
def test_non_float_dtypes_are_type_errors(dtype):
    with pytest.raises(TypeError, match="supported dtypes: float32, bfloat16, float16"):
        quantize(torch.zeros(4, 40, dtype=dtype))


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown recipe 'tetrajett'; valid choices: .*bf16.*microscaling.*tetrajet"):
        get_recipe("tetrajett")
    with pytest.raises(ValueError, match="unknown recipe"):
        QLinear(8, 8, recipe="nope")


def test_bad_quantizer_config():
    with pytest.raises(ValueError, match="unknown rounding 'sr'"):
        QuantizerConfig(rounding="sr")
    with pytest.raises(ValueError, match="unknown quantizer 'q9'"):
        get_recipe("tetrajet").only("q9")


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    from quantization.mx import backends

    # Not by setting TRITON_INTERPRET=0: Triton would then compile, not interpret, kernels first used after this test.
    monkeypatch.setattr(backends, "triton_interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        quantize(torch.randn(4, 40), backend="triton")


def test_new_format_is_one_line_and_packing_needs_four_bits(monkeypatch):
    from quantization.mx import formats

    monkeypatch.setitem(formats.FORMATS, "e3m2", formats.ElementFormat("e3m2", 3, 2))  # OCP FP6: one line
    assert quantize(torch.tensor([1.0, 28.0, 3.3, 0.1]), fmt="e3m2").tolist() == [1.0, 28.0, 3.5, 0.125]
    with pytest.raises(ValueError, match="needs a 4-bit format"):
        quantize_packed(torch.randn(4, 40), fmt="e3m2")
