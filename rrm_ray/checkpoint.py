"""Checkpoint directories: atomic completion, discovery of the latest complete one, retention.

A checkpoint is written into `step_000012.partial/` and renamed to `step_000012/` only after every
part (learner shards, driver state) is on disk, and a `COMPLETE` marker with a manifest is written
last inside it. A directory without the marker (a job killed mid-write) is never loaded:

    runs/x/checkpoints/
      step_000010/          COMPLETE, driver_state.json, driver_rng.pt, config.yaml, learner/...
      step_000012.partial/  (killed mid-write: ignored, removed by the next save)
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class DriverState:
    """What the driver needs to continue exactly where it stopped."""

    step: int
    data_position: int
    mlflow_run_id: str | None
    extra: dict[str, Any]


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def begin(root: str | Path, step: int) -> Path:
    """A fresh `.partial` directory for this step (a leftover from a killed write is discarded)."""
    partial = step_dir(root, step).with_name(f"step_{step:06d}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def write_driver_state(directory: Path, state: DriverState, config_yaml: str) -> None:
    (directory / "driver_state.json").write_text(json.dumps(asdict(state), indent=2))
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, directory / "driver_rng.pt")
    (directory / "config.yaml").write_text(config_yaml)


def commit(partial: Path, manifest: dict[str, Any]) -> Path:
    """Mark complete and move into place; after this the checkpoint is loadable."""
    (partial / MARKER).write_text(json.dumps({"written_at": time.time(), **manifest}, indent=2))
    final = partial.with_name(partial.name.removesuffix(".partial"))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def is_complete(directory: Path) -> bool:
    return bool(_STEP_DIR.match(directory.name)) and (directory / MARKER).is_file()


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and is_complete(d)]
    return sorted(found, key=lambda d: int(_STEP_DIR.match(d.name).group(1)))  # type: ignore[union-attr]


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """`auto`: the latest complete checkpoint under root (None if there is none); a path: that one."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(
            f"checkpoint.resume={resume!r} is not a complete checkpoint (a step_NNNNNN directory with a "
            f"{MARKER} marker); complete ones under {root}: {[p.name for p in complete_checkpoints(root)]}"
        )
    return path


def read_driver_state(directory: Path, restore_rng: bool = True) -> DriverState:
    """The saved driver state; with `restore_rng` also puts the driver's RNGs back where they were."""
    state = DriverState(**json.loads((directory / "driver_state.json").read_text()))
    if restore_rng:
        rng = torch.load(directory / "driver_rng.pt", weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
    return state


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints and any stale `.partial` dirs."""
    root = Path(root)
    removed = []
    complete = complete_checkpoints(root)
    for old in complete[: max(0, len(complete) - keep_last)]:
        shutil.rmtree(old)
        removed.append(old)
    for partial in root.glob("step_*.partial") if root.is_dir() else []:
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    return removed
