"""MXFP4 export (quantization/export.py, scripts/export_mxfp4.py): the packed file decodes bit for bit to Q2(W) in
every code, scale and special block; a model evaluated from it gives the run's logits and top-1; errors explain
themselves."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import export_mxfp4
import main
import training
from configs import save_config
from datasets import build_datasets
from quantization import ExportError, QLinear, check_exportable, eval_recipe, get_recipe, load_mxfp4, save_mxfp4
from quantization.export import read_metadata

from tests.helpers import tiny_config

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
ALL_CODES = torch.tensor(E2M1 + [-v for v in E2M1])  # codes 0..15 in order; code 8 is -0


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (signed zeros and NaNs compare exactly)."""
    return t.float().view(torch.int32)


def _edge_weight() -> torch.Tensor:
    """Rows of 32: every code at scales 2^0, 2^-127 (subnormal results) and 2^125; a block that saturates under
    rceil; zeros of both signs; a NaN block; and random values."""
    every = ALL_CODES.repeat(2)
    rows = [every, every * 2.0**-127, every * 2.0**125, torch.full((32,), 3.3e38) * torch.tensor([1.0, -1.0] * 16),
            torch.tensor([0.0, -0.0] * 16), torch.cat([torch.tensor([float("nan")]), torch.ones(31)]),
            torch.randn(32)]
    return torch.stack(rows)


def _decode(path, prefix: str, cols: int) -> np.ndarray:
    """The documented layout decoded by hand from the file's raw bytes: low nibble first, sign bit 3, magnitude
    index bits 0-2, factor 2^(b - 127) per block of 32, b = 255 a NaN block."""
    with safe_open(str(path), "np") as handle:
        packed, scales = handle.get_tensor(f"{prefix}.weight_packed"), handle.get_tensor(f"{prefix}.weight_scale")
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], -1)[:, :cols]
    magnitude = np.array(E2M1, dtype=np.float64)[codes & 7]
    values = np.where(codes & 8, -magnitude, magnitude)
    exponents = np.repeat(scales.astype(np.int64), 32, axis=1)[:, :cols]
    factor = np.where(exponents == 255, np.nan, np.ldexp(1.0, exponents - 127))
    return (values * factor).astype(np.float32)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_packed_file_round_trips_every_code_scale_and_special_block(tmp_path, dtype):
    model = nn.Sequential(QLinear(32, 7), QLinear(45, 3))  # 45: a 13-wide tail block and a padded last byte
    with torch.no_grad():
        model[0].weight.copy_(_edge_weight())
        model[1].weight.copy_(torch.randn(3, 45))
    path = save_mxfp4(tmp_path / "edge.safetensors", model, autocast_dtype=dtype)
    state, metadata = load_mxfp4(path)
    for index, cols in ((0, 32), (1, 45)):
        expected = model[index].quantized_weight(dtype)
        assert state[f"{index}.weight"].dtype == expected.dtype
        assert torch.equal(_bits(state[f"{index}.weight"]), _bits(expected))
        decoded, expected = torch.from_numpy(_decode(path, str(index), cols)), expected.float()
        assert torch.equal(decoded.isnan(), expected.isnan())  # NaN payloads aside (bf16's NaN is 0xFFFF)
        assert torch.equal(_bits(decoded.nan_to_num()), _bits(expected.nan_to_num()))
    with safe_open(str(path), "pt") as handle:
        packed, scales = handle.get_tensor("0.weight_packed"), handle.get_tensor("0.weight_scale")
    assert packed[0, :8].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]  # element 2j in the low nibble
    # 2^0, 2^-127, 2^125, 2^126 (where 4 x 2^126 would overflow: rceil saturates to 3 x 2^126), zero, NaN
    assert scales[:6, 0].tolist() == [127, 0, 252, 253, 0, 255]
    assert state["0.weight"][3, :2].float().tolist() == [3 * 2.0**126, -3 * 2.0**126]
    assert packed[4].tolist() == [0x80] * 16 and packed[5].tolist() == [0] * 16  # signed zeros; a NaN block's codes
    assert (metadata["format"], metadata["block_size"], metadata["weight_dtype"]) == \
        ("mxfp4", "32", "float32" if dtype is None else "bfloat16")
    assert json.loads(metadata["quantized"]) == {"0.weight": [7, 32], "1.weight": [3, 45]}


@pytest.mark.parametrize("recipe", ["tetrajet", "tetrajet_qema", "microscaling"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_exported_weight_is_q2_bit_for_bit_and_the_forward_is_unchanged(tmp_path, recipe, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(QLinear(96, 64, recipe=recipe), nn.GELU(), QLinear(64, 40, recipe=recipe)).eval()
    if model[0].recipe.uses_qema:  # an EMA that has passed its warm-up and differs from W: Q-EMA rounding acts
        for layer in (model[0], model[2]):
            layer.qema_state.weight_ema.add_(0.02 * torch.randn_like(layer.qema_state.weight_ema))
            layer.qema_state.ema_updates.fill_(10)
        nearest = QLinear.from_linear(model[0], "tetrajet").quantized_weight(dtype)
        assert not torch.equal(model[0].quantized_weight(dtype), nearest)
    path = save_mxfp4(tmp_path / "w.safetensors", model, autocast_dtype=dtype)
    state, _ = load_mxfp4(path)
    for name in ("0", "2"):
        assert torch.equal(_bits(state[f"{name}.weight"]), _bits(model.get_submodule(name).quantized_weight(dtype)))
    packed = nn.Sequential(QLinear(96, 64, recipe=eval_recipe(get_recipe(recipe))), nn.GELU(),
                           QLinear(64, 40, recipe=eval_recipe(get_recipe(recipe)))).eval()
    packed.load_state_dict(state)
    x = torch.randn(5, 7, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        assert torch.equal(packed(x), model(x))


def _train(tmp_path, name, *overrides, method="tetrajet"):
    run_dir = tmp_path / name
    main.run(tiny_config(run_dir, *overrides, method=method))
    return run_dir


def _logits(model, run_dir, amp_dtype):
    config = export_mxfp4.read_run_config(run_dir, None)
    data = build_datasets(config.data, config.aug, config.model.img_size, config.model.in_chans)
    images = torch.stack([image for image, _ in data.val])
    with torch.no_grad(), torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        return model.eval()(images)


@pytest.mark.slow
def test_evaluation_from_the_packed_file_is_the_runs(tmp_path, capsys):
    # Q-EMA under bf16 autocast with a model EMA: 16 steps, so Q-EMA's rounding is on after step 10.
    run_dir = _train(tmp_path, "qema", "data.batch_size=16", "train.amp=bf16", "train.model_ema=true",
                     "train.model_ema_decay=0.9", method="tetrajet_qema")
    checkpoint = training.load(run_dir / "checkpoint_last.pth")
    assert int(checkpoint["model"]["blocks.0.attn.qkv.qema_state.ema_updates"]) == 16
    logged = training.read_log(run_dir)[-1]
    config = export_mxfp4.read_run_config(run_dir, None)
    for weights, key in (("model", "test_acc1"), ("ema", "ema_acc1")):
        output = tmp_path / f"{weights}.safetensors"
        result = export_mxfp4.export(export_mxfp4.parse_args([str(run_dir), "--weights", weights, "--evaluate",
                                                              "--output", str(output)]))
        assert result["packed_top1"] == result["logged_top1"] == logged[key]
        state, metadata = load_mxfp4(output)
        assert metadata["recipe"] == "tetrajet_qema" and metadata["weights"] == weights and metadata["epoch"] == "0"
        assert json.loads(metadata["run_config"])["train"]["amp"] == "bf16"
        trained_state, _ = export_mxfp4.checkpoint_weights(run_dir / "checkpoint_last.pth", weights)
        trained = export_mxfp4.build(config, config.method.resolved, 10)
        trained.load_state_dict(trained_state)
        packed = export_mxfp4.build(config, eval_recipe(config.method.resolved), 10)
        packed.load_state_dict(state)
        assert torch.equal(_logits(packed, run_dir, torch.bfloat16), _logits(trained, run_dir, torch.bfloat16))
        assert result["file_bytes"] < result["bf16_bytes"]
    # The quickstart's fp32 evaluation: the rest stays fp32; all in bf16 is smaller.
    run_dir = _train(tmp_path, "fp32")
    assert export_mxfp4.main([str(run_dir), "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "file / bf16" in out and "(same)" in out
    exact = (run_dir / "mxfp4-last-model.safetensors").stat().st_size
    assert export_mxfp4.main([str(run_dir), "--rest", "bf16", "--output", str(tmp_path / "bf16.safetensors")]) == 0
    assert (tmp_path / "bf16.safetensors").stat().st_size < exact
    assert load_mxfp4(tmp_path / "bf16.safetensors")[0]["pos_embed"].dtype == torch.bfloat16


@pytest.mark.parametrize("method, overrides, message", [
    ("bf16", [], "recipe 'bf16' has no weight quantizer (q2 is off): its weights are not MXFP4"),
    ("int4", [], "recipe 'int4' runs the int4 op instead of the six MX quantizers"),
    ("tetrajet", ["method.recipe=table7_e3m0_e2m1"], "q2 format 'e3m0' is not MXFP4; valid: 'e2m1'"),
    ("tetrajet_no_weight_q", [], "has no weight quantizer (q2 is off)"),
])
def test_recipes_whose_weights_are_not_mxfp4_are_refused(tmp_path, capsys, method, overrides, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(tiny_config(run_dir, *overrides, method=method), run_dir / "config.yaml")
    assert export_mxfp4.main([str(run_dir)]) == 2
    assert message in capsys.readouterr().err


def test_stochastic_weight_rounding_is_refused():
    recipe = get_recipe("tetrajet")
    with pytest.raises(ExportError, match="q2 rounding 'stochastic' .*valid: nearest, even, ema"):
        check_exportable(recipe.replace(q2=recipe.q3))


def test_run_directory_and_checkpoint_errors(tmp_path, capsys):
    def error(*argv):
        assert export_mxfp4.main([str(a) for a in argv]) == 2
        return capsys.readouterr().err

    assert f"run directory {tmp_path / 'missing'} does not exist" in error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "has no config.yaml" in error(tmp_path / "empty")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(tiny_config(run_dir), run_dir / "config.yaml")
    assert "has no checkpoint_last.pth; valid: none, no checkpoint was written" in error(run_dir)
    (run_dir / "checkpoint_last.pth").write_bytes(b"not a checkpoint")
    unreadable = error(run_dir)
    assert "unreadable, truncated or not a checkpoint" in unreadable and "--resume" not in unreadable
    assert "has no checkpoint_best.pth; valid: --checkpoint last" in error(run_dir, "--checkpoint", "best")
    torch.save({"epoch": 0, "model": {}, "model_ema": None}, run_dir / "checkpoint_last.pth")
    assert "holds no model EMA (the run had train.model_ema off); valid: --weights model" in \
        error(run_dir, "--weights", "ema")
    assert "has no classifier head.weight" in error(run_dir)


def test_loader_refuses_files_that_are_not_exports(tmp_path):
    with pytest.raises(ExportError, match="no such file"):
        load_mxfp4(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ExportError, match="not a safetensors file"):
        load_mxfp4(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ExportError, match="format None in its metadata, expected 'mxfp4'"):
        read_metadata(tmp_path / "plain.safetensors")
    path = save_mxfp4(tmp_path / "ok.safetensors", nn.Sequential(QLinear(32, 4)))
    with safe_open(str(path), "pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    del tensors["0.weight_scale"]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=metadata)
    with pytest.raises(ExportError, match="packed weight '0.weight' is missing or corrupt"):
        load_mxfp4(tmp_path / "cut.safetensors")
