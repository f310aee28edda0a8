"""Run logging on rank 0: a JSON-lines file (read by the table scripts), TensorBoard scalars when tensorboardX is
installed, and human-readable lines through the ``logging`` module."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("tetrajet")

LOG_FILE = "log.jsonl"


class RunLogger:
    """Writes records such as {"type": "epoch", "epoch": 3, "test_acc1": 71.2, ...}; a no-op on other ranks.

    Numeric fields also go to TensorBoard as ``<type>/<field>`` at the record's ``step`` (or ``epoch``).
    ``append``: continue the existing log (a resumed run) instead of starting it afresh.
    """

    def __init__(self, output_dir: "str | Path", enabled: bool, append: bool) -> None:
        self.enabled = enabled
        self._file = self._writer = None
        if not enabled:
            return
        output_dir = Path(output_dir)
        self._file = (output_dir / LOG_FILE).open("a" if append else "w")
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.warning("tensorboardX is not installed: no TensorBoard scalars, logging to %s only",
                        output_dir / LOG_FILE)
        else:
            self._writer = SummaryWriter(str(output_dir / "tensorboard"))

    @property
    def tb_writer(self):
        """The tensorboardX SummaryWriter, or None (not the main rank, or tensorboardX missing)."""
        return self._writer

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            kind, step = record["type"], record.get("step", record.get("epoch", 0))
            for key, value in record.items():
                if key not in ("type", "step", "epoch") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_log(path: "str | Path", kind: str = "epoch") -> list[dict]:
    """The records of one ``type`` from a run's JSON-lines log (``path``: the file or the run directory).

    Epoch records are de-duplicated, the last one of each epoch kept: an epoch that a resumed run repeated
    (interrupted after logging, before its checkpoint) appears once, as the resumed run measured it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    with path.open() as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    records = [record for record in records if record.get("type") == kind]
    if kind == "epoch":
        records = sorted({record["epoch"]: record for record in records}.values(), key=lambda r: r["epoch"])
    return records


def setup_console(is_main: bool) -> None:
    """Console logging: INFO on rank 0, warnings and errors only elsewhere."""
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
