"""The MX numerics core: element formats and scale rules, the PyTorch reference quantizers, the Triton kernels, the
backend choice, the quantizers as torch.library custom ops, the public quantize/dequantize/MXTensor ops and where
weights sit on the grid. It imports nothing from the rest of ``quantization`` (Linear, recipes, methods, baselines
are built on it), and Triton only when a kernel runs."""
from .backends import BACKENDS
from .formats import BLOCK_SIZE, FORMATS, LAYOUTS, ROUNDINGS, SCALE_RULES, ElementFormat, Rounding, get_format
from .grid import block_scales, grid_index, grid_magnitudes, index_value
from .ops import (MXTensor, dequantize, draw_seeds, quantize, quantize_2d, quantize_both_layouts_2d, quantize_packed,
                  requantize_2d)

__all__ = [
    "BACKENDS", "BLOCK_SIZE", "FORMATS", "LAYOUTS", "ROUNDINGS", "SCALE_RULES", "ElementFormat", "Rounding",
    "get_format",
    "block_scales", "grid_index", "grid_magnitudes", "index_value",
    "MXTensor", "dequantize", "draw_seeds", "quantize", "quantize_2d", "quantize_both_layouts_2d", "quantize_packed",
    "requantize_2d",
]
