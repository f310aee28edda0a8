"""Export of a trained quantized model: every QLinear's forward weight Q2(W) stored as packed MXFP4 (E2M1 codes plus
E8M0 block scales) in a safetensors file, every other tensor as the evaluation consumes it; and the loader back.

The file (docs/numerics.md#exported-mxfp4-files has the full layout):

* ``<layer>.weight_packed``: uint8 (C, ceil(D / 2)), two E2M1 codes a byte along D, element 2j in the low nibble
  and 2j + 1 in the high one (a zero nibble pads an odd D). A code is sign bit 3 | magnitude index bits 0-2 into
  (0, 0.5, 1, 1.5, 2, 3, 4, 6): 0x9 is -0.5, 0x8 is -0.
* ``<layer>.weight_scale``: uint8 (C, ceil(D / 32)), one E8M0 byte b per block of 32 along D (the reduction dim of
  Y = X W^T), the block's factor 2^(b - 127); b = 255 marks a NaN block (its codes are zero). An all-zero block has
  b = 0 (its exponent sits at the lower clamp -127) and codes 0 or 0x8 (signed zeros survive).
* every other entry of the model's state dict under its own name (the QLinears' methods' layer states, such as
  Q-EMA's ``qema_state`` and Freeze's ``freeze_state``, are left out: they are baked into the codes or only matter
  for training). ``rest="eval"`` stores each in the dtype the evaluation computes with: under bf16 (fp16) autocast
  the weights and biases of Linear and Conv modules are cast to bf16 (fp16) before use, so they are stored so,
  bit-exactly; LayerNorm parameters, position embeddings and class tokens enter fp32 arithmetic and stay fp32.
  ``rest="bf16"`` stores every floating tensor in bf16 (smaller, but the evaluation may then differ).
* ``__metadata__``: ``format`` "mxfp4", ``format_version``, the element format, block size, layout, nibble order
  and scale encoding in words, ``weight_dtype`` (the dtype Q2 ran in, which the loader dequantizes to),
  ``rest``, ``quantized`` (JSON: layer weight name -> [C, D]) and whatever the caller adds (recipe, run config,
  source commit).

Why the safetensors library rather than a writer of our own: timm already depends on it (so it adds no install),
it is the reference implementation of the format other tools read, and it loads without unpickling anything.

The weights are Q2(W) bit for bit as QLinear's forward computes them: W cast to the autocast dtype, quantized by the
recipe's q2 with Q-EMA rounding once active. To evaluate, rebuild the model with ``eval_recipe(recipe)`` (q2 off, so
the dequantized weights are not quantized again; Q1 still quantizes the activations) and load ``load_mxfp4``'s state.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .linear import QLinear
from .mx.formats import BLOCK_SIZE, SCALE_BIAS, SCALE_NAN
from .mx.ops import MXTensor, dequantize, quantize_packed
from .recipes import Recipe

FORMAT = "mxfp4"
FORMAT_VERSION = "1"
PACKED_SUFFIX, SCALE_SUFFIX = ".weight_packed", ".weight_scale"
RESTS = ("eval", "bf16")
EXPORTABLE_ROUNDINGS = ("nearest", "even", "ema")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LAYOUT_METADATA = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "element": "e2m1: code = sign bit 3 | magnitude index bits 0-2 into [0, 0.5, 1, 1.5, 2, 3, 4, 6]",
    "block_size": str(BLOCK_SIZE),
    "layout": "1x32: blocks of 32 consecutive elements along the last dim (D, the reduction dim of Y = X W^T)",
    "nibble_order": "two codes per uint8 along the last dim: element 2j in the low nibble, 2j+1 in the high one",
    "scale": f"e8m0: uint8 b per block, factor 2^(b-{SCALE_BIAS}); {SCALE_NAN} = NaN block; zero block: b = 0",
}


class ExportError(ValueError):
    """A model or recipe that cannot be exported as MXFP4, or a file that is not a valid export."""


def check_exportable(recipe: Recipe) -> None:
    """Raise ExportError unless ``recipe``'s forward weight quantizer q2 is deterministic MXFP4 (E2M1), naming the bad
    value and what is valid."""
    if recipe.op is not None:
        raise ExportError(f"recipe {recipe.name!r} runs the {recipe.scheme} op instead of the six MX quantizers: its "
                          f"weights are not MXFP4; exportable recipes have an e2m1 weight quantizer q2 (tetrajet, "
                          f"tetrajet_qema, microscaling, ...)")
    q2 = recipe.q2
    if q2 is None:
        raise ExportError(f"recipe {recipe.name!r} has no weight quantizer (q2 is off): its weights are not MXFP4; "
                          f"exportable recipes have an e2m1 q2 (tetrajet, tetrajet_qema, microscaling, ...)")
    if q2.fmt != "e2m1":
        raise ExportError(f"recipe {recipe.name!r}: q2 format {q2.fmt!r} is not MXFP4; valid: 'e2m1'")
    if q2.rounding not in EXPORTABLE_ROUNDINGS:
        raise ExportError(f"recipe {recipe.name!r}: q2 rounding {q2.rounding!r} draws other weights at every forward, "
                          f"so no one set of codes is the model; valid: {', '.join(EXPORTABLE_ROUNDINGS)}")


def eval_recipe(recipe: Recipe) -> Recipe:
    """The recipe that evaluates exported weights: ``recipe`` with q2 off (the weights arrive as Q2(W) already; Q-EMA
    rounding is not idempotent, so quantizing them again could change them) and its training-only parts removed.
    Q1 and the rest stay, so activations are quantized exactly as in the run's evaluation."""
    check_exportable(recipe)
    return recipe.replace(name=f"{recipe.name}+{FORMAT}_weights", q2=None, methods=())


@torch.no_grad()
def packed_weight(layer: QLinear, dtype: torch.dtype | None = None) -> MXTensor:
    """Q2(W) of ``layer`` in packed form, as its forward computes it: W cast to ``dtype`` (the autocast dtype; None:
    W's own), quantized by q2 against QLinear's own Q-EMA target (``QLinear.rounding_target``: the EMA once active,
    before that W itself, against which "ema" rounding is nearest)."""
    check_exportable(layer.recipe)
    q2 = layer.recipe.q2
    weight = layer.weight.detach().to(dtype or layer.weight.dtype).contiguous()
    return quantize_packed(weight, "1x32", q2.fmt, q2.scale_rule, q2.rounding, ema=layer.rounding_target(weight))


def _autocast_consumed(model: nn.Module) -> set[str]:
    """State-dict names of the parameters that autocast casts before use: those of Linear and Conv modules."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            names.update(f"{prefix}.{name}" for name, _ in module.named_parameters(recurse=False))
    return names


def _rest_dtype(name: str, tensor: torch.Tensor, rest: str, autocast_dtype: torch.dtype | None,
                consumed: set[str]) -> torch.dtype:
    if not tensor.is_floating_point():
        return tensor.dtype
    if rest == "bf16":
        return torch.bfloat16
    return autocast_dtype if autocast_dtype is not None and name in consumed else tensor.dtype


def export_tensors(model: nn.Module, autocast_dtype: torch.dtype | None = None,
                   rest: str = "eval") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and layout metadata of ``model``'s export (see the module docstring); ``autocast_dtype``: the
    dtype the evaluation autocasts to (None: no autocast)."""
    if rest not in RESTS:
        raise ExportError(f"unknown rest {rest!r}; valid choices: {', '.join(RESTS)}")
    if autocast_dtype not in (None, *_DTYPES.values()):
        raise ExportError(f"unknown autocast dtype {autocast_dtype}; valid: None, {', '.join(_DTYPES)}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QLinear)}
    if not layers:
        raise ExportError(f"{type(model).__name__} has no QLinear: nothing to export as MXFP4")
    consumed = _autocast_consumed(model)
    tensors: dict[str, torch.Tensor] = {}
    quantized: dict[str, list[int]] = {}
    weight_dtype = None
    for name, layer in layers.items():
        mx = packed_weight(layer, autocast_dtype)
        tensors[name + PACKED_SUFFIX], tensors[name + SCALE_SUFFIX] = mx.packed, mx.scales
        quantized[f"{name}.weight"] = list(mx.shape)
        weight_dtype = mx.dtype
    for key, value in model.state_dict().items():
        owner = next((name for name in layers if key.startswith(f"{name}.")), None)
        if owner is not None and key != f"{owner}.bias":
            continue  # the packed weight, or quantizer state (Q-EMA, Freeze) that the codes already reflect
        tensors[key] = value.detach().to(_rest_dtype(key, value, rest, autocast_dtype, consumed)).contiguous()
    metadata = {**_LAYOUT_METADATA, "weight_dtype": str(weight_dtype).removeprefix("torch."), "rest": rest,
                "quantized": json.dumps(quantized)}
    return {key: value.cpu() for key, value in tensors.items()}, metadata


def save_mxfp4(path: "str | Path", model: nn.Module, autocast_dtype: torch.dtype | None = None, rest: str = "eval",
               metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s export to ``path`` (safetensors); ``metadata`` (str -> str) joins the layout metadata, whose
    keys it may not reuse. Returns the path."""
    tensors, layout = export_tensors(model, autocast_dtype, rest)
    clash = sorted(set(layout) & set(metadata or {}))
    if clash:
        raise ExportError(f"metadata keys {clash} are reserved for the file layout")
    path = Path(path)
    save_file(tensors, str(path), metadata={**layout, **(metadata or {})})
    return path


def read_metadata(path: "str | Path") -> dict[str, str]:
    """The ``__metadata__`` of an export; ExportError if the file is not a safetensors file of this format."""
    with _open(path) as handle:
        return _checked_metadata(path, handle.metadata())


def load_mxfp4(path: "str | Path") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict of an export, every packed weight dequantized (to the dtype Q2 ran in: Q2(W) bit for bit), and
    its metadata. Load it into a model built with ``eval_recipe`` of the run's recipe."""
    with _open(path) as handle:
        metadata = _checked_metadata(path, handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    dtype = _DTYPES[metadata["weight_dtype"]]
    state = {}
    for name, shape in json.loads(metadata["quantized"]).items():
        prefix = name.removesuffix(".weight")
        try:
            mx = MXTensor(tensors.pop(prefix + PACKED_SUFFIX), tensors.pop(prefix + SCALE_SUFFIX), torch.Size(shape),
                          dtype, "1x32", "e2m1")
            state[name] = dequantize(mx, backend="torch")
        except (KeyError, ValueError) as error:
            raise ExportError(f"{path}: packed weight {name!r} is missing or corrupt ({error})") from None
    stray = sorted(key for key in tensors if key.endswith((PACKED_SUFFIX, SCALE_SUFFIX)))
    if stray:
        raise ExportError(f"{path}: packed tensors {stray} are not listed in the metadata's 'quantized'")
    state.update(tensors)
    return state, metadata


def _open(path: "str | Path"):
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as error:
        raise ExportError(f"{path}: not a safetensors file ({error})") from None


def _checked_metadata(path: "str | Path", metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = metadata or {}
    if metadata.get("format") != FORMAT:
        raise ExportError(f"{path}: format {metadata.get('format')!r} in its metadata, expected {FORMAT!r} (a file "
                          f"written by quantization.save_mxfp4)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {metadata.get('format_version')!r}; this code reads "
                          f"{FORMAT_VERSION!r}")
    if metadata.get("weight_dtype") not in _DTYPES or "quantized" not in metadata:
        raise ExportError(f"{path}: metadata lacks a valid weight_dtype ({', '.join(_DTYPES)}) or 'quantized'")
    return metadata


def header_nbytes(path: "str | Path") -> int:
    """Bytes of a safetensors file before its tensor data: the 8-byte length and the JSON header (metadata included)."""
    with Path(path).open("rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def state_nbytes(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors of ``state``, every floating one counted in ``dtype`` when given (e.g. bf16, to size the
    same model's weights as a bf16 file)."""
    total = 0
    for value in state.values():
        size = torch.empty((), dtype=dtype).element_size() if dtype is not None and value.is_floating_point() \
            else value.element_size()
        total += value.numel() * size
    return total
