"""MXFP4 simulated quantization for training: formats, exact reference quantizers, Triton kernels, the six-quantizer
Linear and named recipes. Standalone: imports nothing from the training code."""
from .formats import FORMATS, LAYOUTS, ROUNDINGS, SCALE_RULES, ElementFormat, get_format
from .ops import MXTensor, dequantize, quantize, quantize_packed

__all__ = [
    "FORMATS", "LAYOUTS", "ROUNDINGS", "SCALE_RULES", "ElementFormat", "get_format",
    "MXTensor", "dequantize", "quantize", "quantize_packed",
]
from .linear import MXLinearFunction, QLinear
from .recipes import RECIPES, ROLES, QuantizerConfig, Recipe, get_recipe

__all__ += ["MXLinearFunction", "QLinear", "RECIPES", "ROLES", "QuantizerConfig", "Recipe", "get_recipe"]
