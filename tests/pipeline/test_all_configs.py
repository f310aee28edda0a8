"""Every method file in configs/ loads, builds its model and trains a step on the CPU (issue: every config runs)."""
import pytest

import main
from training import read_log

from tests.helpers import REPO, tiny_config

METHOD_FILES = sorted(p.relative_to(REPO / "configs" / "methods").with_suffix("").as_posix()
                      for p in (REPO / "configs" / "methods").rglob("*.yaml"))


@pytest.mark.parametrize("method", METHOD_FILES)
def test_method_file_trains_a_step(tmp_path, method):
    record = main.run(tiny_config(tmp_path / "run", "data.train_subset=32", "data.val_subset=32",
                                  "method.recipe.qramping.calib_steps=2" if "qramping" in method else "train.seed=0",
                                  method=method))
    assert record["steps"] == 1 and record["train_loss"] > 0
    assert read_log(tmp_path / "run", "run")[0]["quantized_linears"] == 8
