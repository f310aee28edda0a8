"""Training support for main.py and engine.py: distribution, checkpoints, logging, optimizer and schedule, the
batches of Q-Ramping's calibrations and the taking back of their steps, and the training step as CUDA graphs
(train.cuda_graph)."""
from .calibration import CalibrationBatches
from .checkpoint import (CheckpointError, brief, checkpoint_error, load, rng_state, save_atomic, seed_everything,
                         set_rng_state)
from .compile import compile_model
from .cuda_graph import GraphedTrainStep, check_context as check_cuda_graph_context, cuda_capture, eager_capture
from .distributed import (DistContext, ReplicaMismatchError, all_reduce_sum, barrier, broadcast_from_main,
                          check_replicas, cleanup, gather_objects, init_distributed)
from .logger import RunLogger, read_log, setup_console
from .optim import OPTIMIZERS, build_criterion, build_optimizer, load_optimizer_state, scaled_lr
from .provenance import source_commit
from .rewind import rewound
from .schedule import LRSchedule, build_scheduler

__all__ = ["CalibrationBatches", "CheckpointError", "DistContext", "GraphedTrainStep", "LRSchedule", "OPTIMIZERS",
           "ReplicaMismatchError", "RunLogger", "all_reduce_sum", "barrier", "brief", "broadcast_from_main",
           "build_criterion", "build_optimizer", "build_scheduler", "check_cuda_graph_context", "check_replicas",
           "checkpoint_error", "cleanup", "compile_model", "cuda_capture", "eager_capture", "gather_objects",
           "init_distributed", "load", "load_optimizer_state", "read_log", "rewound", "rng_state", "save_atomic",
           "scaled_lr", "seed_everything", "set_rng_state", "setup_console", "source_commit"]
