"""Training support for main.py and engine.py: distribution, checkpoints, logging, optimizer and schedule, and the
batches of Q-Ramping's calibrations."""
from .calibration import CalibrationBatches
from .checkpoint import (CheckpointError, brief, checkpoint_error, load, rng_state, save_atomic, seed_everything,
                         set_rng_state)
from .compile import compile_model
from .distributed import (DistContext, ReplicaMismatchError, all_reduce_sum, barrier, check_replicas, cleanup,
                          gather_objects, init_distributed)
from .logger import RunLogger, read_log, setup_console
from .optim import OPTIMIZERS, build_criterion, build_optimizer, scaled_lr
from .provenance import source_commit
from .schedule import LRSchedule, build_scheduler

__all__ = ["CalibrationBatches", "CheckpointError", "DistContext", "LRSchedule", "OPTIMIZERS", "ReplicaMismatchError",
           "RunLogger", "all_reduce_sum", "barrier", "brief", "build_criterion", "build_optimizer", "build_scheduler",
           "check_replicas", "checkpoint_error", "cleanup", "compile_model", "gather_objects", "init_distributed",
           "load", "read_log", "rng_state", "save_atomic", "scaled_lr", "seed_everything", "set_rng_state",
           "setup_console", "source_commit"]
