"""The command line that trains one planned run: main.py with --resume auto, through torchrun or plain python."""
from __future__ import annotations

from dataclasses import dataclass

from .plan import PlannedRun
from .profiles import LAUNCHERS, Profile


@dataclass(frozen=True)
class Launch:
    """How processes start: the interpreter, and for torchrun the processes per node and the node group."""
    python: str = "python"
    data_path: str = ""
    nproc: int = 4
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def command(profile: Profile, launch: Launch, run: PlannedRun) -> list[str]:
    """The argument vector (run from the repo root) that trains or continues ``run``."""
    if profile.launcher == "torchrun":
        prefix = [launch.python, "-m", "torch.distributed.run", f"--nnodes={launch.nnodes}",
                  f"--node_rank={launch.node_rank}", f"--master_addr={launch.master_addr}",
                  f"--master_port={launch.master_port}", f"--nproc_per_node={launch.nproc}", "main.py"]
    elif profile.launcher == "python":
        prefix = [launch.python, "main.py"]
    else:
        raise ValueError(f"profile {profile.name!r}: unknown launcher {profile.launcher!r}; valid choices: "
                         f"{', '.join(LAUNCHERS)}")
    config = run.config
    args = ["--config", config.model_file, "--config", config.method_file, "--data-path", launch.data_path,
            "--output", str(run.directory)]
    for override in (*config.overrides, f"train.seed={run.seed}"):
        args += ["--set", override]
    return [*prefix, *args, "--resume", "auto"]
