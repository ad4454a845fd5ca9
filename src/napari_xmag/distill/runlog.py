"""What a run tells the world: a CSV log, TensorBoard scalars and a progress bar (rank 0 only).

A resumed run cuts both logs back to the checkpoint's step (the CSV rows after it are
dropped; TensorBoard purges its later events), so a crash between a checkpoint and the next
one leaves no duplicated or stale rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .._atomic import OutputKind, atomic_path

__all__ = ["LOG_COLUMNS", "RunLog", "read_log"]

LOG_COLUMNS = (
    "step", "epoch", "lr", "loss", "loss_global", "loss_local", "grad_norm", "loss_scale", "pairs_per_s",
)


def is_run_log(path: Path) -> bool:
    """True for a ``log.csv`` a run wrote: its header is :data:`LOG_COLUMNS`. Never raises."""
    try:
        if not path.is_file():
            return False
        with path.open(encoding="utf-8") as fh:
            return fh.readline(4096).strip() == ",".join(LOG_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def is_tensorboard_folder(path: Path) -> bool:
    """True for a folder holding TensorBoard event files only (what a run writes there)."""
    try:
        return path.is_dir() and not path.is_symlink() and all(
            e.is_file(follow_symlinks=False) and e.name.startswith("events.out.tfevents.")
            for e in os.scandir(path)
        )
    except OSError:
        return False


LOG_KIND = OutputKind("training log", is_run_log)
TENSORBOARD_KIND = OutputKind("TensorBoard folder", is_tensorboard_folder)


class RunLog:
    def __init__(
        self, out_dir: Path, *, enabled: bool, start_step: int, total_steps: int, progress: bool
    ) -> None:
        self.enabled = enabled
        self.csv_path = out_dir / "log.csv"
        self._writer: Any = None
        self._bar: Any = None
        if not enabled:
            return
        _truncate_csv(self.csv_path, start_step)
        new = not self.csv_path.exists()
        self._csv = self.csv_path.open("a", newline="", encoding="utf-8")
        self._rows = csv.DictWriter(self._csv, fieldnames=LOG_COLUMNS)
        if new:
            self._rows.writeheader()

        # purge_step drops events written after the checkpoint (or before any) by a killed run.
        self._writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
        if progress:

            self._bar = tqdm(total=total_steps, initial=start_step, desc="distilling", unit="step")

    def step(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._rows.writerow({k: row.get(k, "") for k in LOG_COLUMNS})
        self._csv.flush()
        step = int(row["step"])
        for key in ("loss", "loss_global", "loss_local", "lr", "grad_norm", "pairs_per_s"):
            if row.get(key) is not None:
                self._writer.add_scalar(f"train/{key}", float(row[key]), step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{float(row['loss']):.4f}")

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.enabled:
            for key, value in values.items():
                self._writer.add_scalar(f"{prefix}/{key}", float(value), step)
            self._writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._writer.close()
        self._csv.close()


def _truncate_csv(path: Path, last_step: int) -> None:
    """Keep the header and the rows up to ``last_step`` (all rows are dropped for a fresh run).

    A row cut short by a killed run (fields missing) goes too, whatever its step reads.
    """
    if not path.exists():
        return
    rows = read_log(path)
    keep = [r for r in rows if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= last_step]
    with atomic_path(path, LOG_KIND) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(keep)


def read_log(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a run's ``log.csv``, as strings."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
