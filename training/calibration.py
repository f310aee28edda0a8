"""The batches of a method's calibrations (Q-Ramping's): a fresh, shuffled loader over the training set for each."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from timm.data import Mixup
from torch.utils.data import Dataset

from configs import DataConfig
from datasets import CALIBRATION_STREAM, build_calibration_loader, mix_seed

from .checkpoint import seed_everything


class CalibrationBatches:
    """Called with a global ``step`` and ``num_batches``: the batches of the calibration at that step, on ``device``.

    Each calibration reads its own loader (datasets.build_calibration_loader: the training set with its training
    transforms, in an order drawn from (seed, step) that leaves the training loader's untouched) through ``mixup``,
    an instance of its own with the training settings. The iterator is lazy: nothing is loaded or drawn until the
    first batch is taken, inside the calibration (QRampingCalibrator.calibrate) after its snapshot of the random
    generators. That first draw seeds the global generators from (seed, step, rank), so the augmentations, Mixup's
    numpy draws and the drop paths of the calibration come from a stream of its own; the calibrator's restore then
    undoes it all.
    """

    def __init__(self, dataset: Dataset, data: DataConfig, *, repeats: int, seed: int, rank: int, world_size: int,
                 device: torch.device, mixup: Optional[Mixup]) -> None:
        self.dataset, self.data, self.repeats, self.seed = dataset, data, repeats, seed
        self.rank, self.world_size = rank, world_size
        self.device, self.mixup = device, mixup

    def __call__(self, step: int, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed_everything(mix_seed(self.seed, CALIBRATION_STREAM, step, self.rank, 1))
        loader = build_calibration_loader(self.dataset, self.data, self.repeats, self.seed, self.rank,
                                          self.world_size, step, num_batches)
        for samples, targets in loader:
            samples = samples.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.mixup is not None:
                samples, targets = self.mixup(samples, targets)
            yield samples, targets
