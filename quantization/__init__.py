"""MXFP4 simulated quantization for training: the MX numerics core (``quantization.mx``: formats, exact reference
quantizers, Triton kernels, ops), the six-quantizer Linear and named recipes, plus the paper's oscillation tools
(Q-EMA, Q-Ramping, metrics, Dampen/Freeze baselines) and other papers' 4-bit Linear ops (Tseng et al., Wang et al.,
INT4), which register themselves on import here. Standalone: imports nothing from the training code."""
from .mx import (FORMATS, LAYOUTS, ROUNDINGS, SCALE_RULES, ElementFormat, MXTensor, dequantize, get_format, quantize,
                 quantize_packed)

__all__ = [
    "FORMATS", "LAYOUTS", "ROUNDINGS", "SCALE_RULES", "ElementFormat", "get_format",
    "MXTensor", "dequantize", "quantize", "quantize_packed",
]
from .linear import MXLinearFunction, QLinear
from .recipes import RECIPES, ROLES, QuantizerConfig, Recipe, get_recipe, register_recipe
from .registry import LinearOp, linear_op, linear_ops, method_configs, register_linear_op, register_method_config

__all__ += ["MXLinearFunction", "QLinear", "RECIPES", "ROLES", "QuantizerConfig", "Recipe", "get_recipe",
            "register_recipe", "LinearOp", "linear_op", "linear_ops", "method_configs", "register_linear_op",
            "register_method_config"]
from .dampen import DampenConfig, dampen_hook, dampen_loss
from .ema import attach_qema, qema_hook
from .freeze import FreezeConfig, attach_freeze, freeze_hook
from .hooks import (MethodHook, TrainingContext, hooks_optimizer, method_hooks, register_method_hook,
                    with_extra_losses)
from .oscillation import (OscillationMonitor, OscillationRatio, RateOfChange, block_output, nudged_output_change,
                          quant_conf)
from .ramping import QRampingAdamW, QRampingCalibrator, QRampingConfig, qramping_hook

# Importing a method module registers its config under its recipe key (Recipe.to_dict orders the keys by the position
# each registers with, whatever the import order) and its named recipe. The training-side parts of the methods, in the
# order their hooks attach: Q-EMA's step hook runs before Freeze's.
register_method_hook(dampen_hook)
register_method_hook(qema_hook)
register_method_hook(freeze_hook)
register_method_hook(qramping_hook)

__all__ += ["dampen_loss", "attach_qema", "attach_freeze", "OscillationMonitor", "OscillationRatio", "RateOfChange",
            "block_output", "nudged_output_change", "quant_conf", "QRampingAdamW", "QRampingCalibrator", "DampenConfig",
            "FreezeConfig", "QRampingConfig", "MethodHook", "TrainingContext", "hooks_optimizer", "method_hooks",
            "register_method_hook", "with_extra_losses"]
# The other papers' ops: importing each registers its config class, its op and its recipe (in this order, which is
# the order of their keys in Recipe.to_dict).
from .tseng import TsengConfig, tseng_linear
from .wang import WangConfig, wang_linear
from .int4 import Int4Config, int4_linear

__all__ += ["TsengConfig", "tseng_linear", "WangConfig", "wang_linear", "Int4Config", "int4_linear"]
# Export of trained models: packed MXFP4 weights in a safetensors file, and the loader.
from .export import ExportError, check_exportable, eval_recipe, load_mxfp4, packed_weight, read_metadata, save_mxfp4

__all__ += ["ExportError", "check_exportable", "eval_recipe", "load_mxfp4", "packed_weight", "read_metadata",
            "save_mxfp4"]
