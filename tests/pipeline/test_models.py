"""models/: timm DeiT/Swin with exactly the transformer-block Linears swapped for QLinear, weights carried over."""
import copy
import re

import pytest
import timm
import torch
from torch import nn

from models import PAPER_MODELS, block_linear_names, build_model, swap_block_linears
from quantization import QLinear, get_recipe

BLOCK_LINEAR = re.compile(r"(^|\.)blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))$")
TINY_DEIT = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=2, embed_dim=32, num_heads=2)
TINY_SWIN = dict(img_size=56, window_size=7, embed_dim=32, depths=(1, 1), num_heads=(1, 2), num_classes=10)


def _linear_types(model: nn.Module) -> dict:
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("name,kwargs", [("deit_tiny_patch16_224", TINY_DEIT),
                                         ("swin_tiny_patch4_window7_224", TINY_SWIN)])
def test_swap_replaces_exactly_the_block_linears_and_keeps_weights(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    before = copy.deepcopy(model.state_dict())
    recipe = get_recipe("tetrajet")
    replaced = swap_block_linears(model, recipe)
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and BLOCK_LINEAR.search(n)]
    assert replaced == expected and len(replaced) == 4 * len([n for n in expected if n.endswith("qkv")])
    for linear_name, cls in _linear_types(model).items():
        if linear_name in replaced:
            assert cls is QLinear and model.get_submodule(linear_name).recipe is recipe
        else:  # classifier head, Swin's patch merging: untouched
            assert cls is nn.Linear, linear_name
    assert not isinstance(model.patch_embed.proj, QLinear)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_swapped_model_with_bf16_recipe_computes_what_timm_computes():
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY_DEIT)
    torch.manual_seed(0)
    model = build_model("deit_tiny_patch16_224", get_recipe("bf16"), **TINY_DEIT)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), reference(x))
    assert model(x).shape == (3, 10)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_at_full_size(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, get_recipe("tetrajet"))
    blocks = len(model.blocks) if hasattr(model, "blocks") else sum(len(layer.blocks) for layer in model.layers)
    quantized = [n for n, cls in _linear_types(model).items() if cls is QLinear]
    assert quantized == block_linear_names(model) and len(quantized) == 4 * blocks
    assert {n for n, cls in _linear_types(model).items() if cls is nn.Linear} <= {"head", "head.fc"} | {
        n for n in _linear_types(model) if n.endswith("downsample.reduction")}


def test_unknown_model_name_lists_the_paper_models():
    with pytest.raises(ValueError, match="unknown timm model 'deit_tiniest'.*deit_tiny_patch16_224"):
        build_model("deit_tiniest", get_recipe("tetrajet"))


def test_model_without_blocks_is_rejected():
    with pytest.raises(ValueError, match="no nn.Linear inside a 'blocks' module"):
        swap_block_linears(nn.Sequential(nn.Linear(4, 4)), get_recipe("tetrajet"))
