"""DeiT and Swin from timm with the transformer-block Linears quantized (QLinear); nothing of timm is vendored."""
from .factory import PAPER_MODELS, build_model
from .swap import block_linear_names, swap_block_linears

__all__ = ["PAPER_MODELS", "block_linear_names", "build_model", "swap_block_linears"]
