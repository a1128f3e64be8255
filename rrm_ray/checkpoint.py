"""Checkpoint directories: one folder per run, atomic and verified completion, discovery, retention.

Each run (a new `rrm-ray train`, or one resumed from a checkpoint, which continues its run) writes into
its own folder under `checkpoint.dir`, named by its run id. A checkpoint is written into
`step_000012.partial/` and renamed to `step_000012/` only after every part (learner shards, driver
state) is on disk and fsynced, and a `COMPLETE` manifest, written last, lists every file with its size
(and CRC-32): a directory without it (a job killed mid-write) is never loaded, and one whose files do
not match it (a disk that lost a write, a copy cut short) is skipped at load for the previous one:

    runs/x/
      grpo-20261206-101502-3fa9/        one run
        step_000010/                    COMPLETE (run id, step, files), driver_state.json, driver_rng.pt,
                                        config.yaml, learner/...
        step_000012.partial/            killed mid-write: ignored, removed by the next save
        final/                          the final policy (HF format)
      grpo-20261207-093011-c41e/        a second run in the same dir: its own series
      logs/

`prune` and a run's own recovery consider only checkpoints whose manifest names the run;
`resume=auto` picks the run that completed a checkpoint last and continues it. Checkpoints written
before run folders existed (`runs/x/step_000010`, no run id) are one more series.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import secrets
import shutil
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_READ_CHUNK = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (incomplete, damaged, another run's), with what to do."""


@dataclass
class DriverState:
    """What the driver needs to continue exactly where it stopped."""

    step: int
    data_position: int
    mlflow_run_id: str | None
    extra: dict[str, Any]
    run_id: str | None = None  # the run the checkpoint belongs to (None: written before run folders)


def new_run_id(kind: str, now: datetime | None = None) -> str:
    """`grpo-20261206-101502-3fa9`: the job, its local start time (folders sort by it), 4 random hex
    digits (two runs started in the same second still differ)."""
    return f"{kind}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def run_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / run_id


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def step_of(directory: Path) -> int:
    match = _STEP_DIR.match(directory.name)
    if match is None:
        raise ValueError(f"{directory} is not a step_NNNNNN directory")
    return int(match.group(1))


def begin(root: str | Path, step: int) -> Path:
    """A fresh `.partial` directory for this step (a leftover from a killed write is discarded)."""
    partial = step_dir(root, step).with_name(f"step_{step:06d}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def write_driver_state(directory: Path, state: DriverState, config_yaml: str) -> None:
    (directory / "driver_state.json").write_text(json.dumps(asdict(state), indent=2))
    # Plain containers and a tensor only: `torch.load(weights_only=True)` reads it back.
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, directory / "driver_rng.pt")
    (directory / "config.yaml").write_text(config_yaml)


# -- completion: fsync, manifest, rename ------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable. Some file systems cannot fsync a
    directory (EINVAL): there the entries are as durable as that file system makes them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _sync_file(path: Path, checksum: bool) -> dict[str, int]:
    """fsync a file (written by this process or an actor's) and describe it: size, and CRC-32 if asked."""
    entry = {"size": path.stat().st_size}
    with path.open("rb") as f:
        if checksum:
            crc = 0
            while chunk := f.read(_READ_CHUNK):
                crc = zlib.crc32(chunk, crc)
            entry["crc32"] = crc
        os.fsync(f.fileno())
    return entry


def file_manifest(directory: Path, checksums: bool = True) -> dict[str, dict[str, int]]:
    """Every file under `directory` (but the marker) -> its size (and CRC-32), each file fsynced, then
    every directory, deepest first."""
    files: dict[str, dict[str, int]] = {}
    dirs = [directory]
    for path in sorted(directory.rglob("*")):
        if path.is_dir():
            dirs.append(path)
        elif path.name != MARKER:
            files[str(path.relative_to(directory))] = _sync_file(path, checksums)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(d)
    return files


def commit(
    partial: Path, manifest: dict[str, Any], run_id: str | None = None, checksums: bool = True
) -> Path:
    """Fsync every file, write the manifest (run id, files with sizes and CRC-32s) as the marker, move the
    directory into place and fsync its parent; after this the checkpoint is loadable and survives a
    crash of the machine. A complete checkpoint of another run at the same path is never replaced."""
    final = partial.with_name(partial.name.removesuffix(".partial"))
    owner = read_manifest(final).get("run_id") if is_complete(final) else run_id
    if owner != run_id:
        raise CheckpointError(
            f"{final} is a complete checkpoint of run {owner!r}, not of this run ({run_id!r}); it is left "
            "as it is. Give this run its own checkpoint.dir"
        )
    files = file_manifest(partial, checksums)
    body = {"written_at": time.time(), "run_id": run_id, **manifest, "files": files}
    with (partial / MARKER).open("w") as f:
        f.write(json.dumps(body, indent=2))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(partial)
    shutil.rmtree(final, ignore_errors=True)  # this run's own (a step trained again after a rollback)
    partial.rename(final)
    _fsync_dir(final.parent)
    return final


# -- discovery and verification ----------------------------------------------------------------------------
def is_complete(directory: Path) -> bool:
    return bool(_STEP_DIR.match(directory.name)) and (directory / MARKER).is_file()


def read_manifest(directory: Path) -> dict[str, Any]:
    """The COMPLETE marker's contents ({} for a marker that is not JSON: written by hand)."""
    try:
        body = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def verify(directory: Path) -> list[str]:
    """What does not match the manifest (missing files, other sizes or CRC-32s); empty: intact.
    A manifest without a file list (written before manifests listed files) is taken as it is."""
    files = read_manifest(directory).get("files")
    if not isinstance(files, dict):
        return []
    problems = []
    for rel, entry in files.items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{rel}: {size} bytes, the manifest says {entry.get('size')}")
            continue
        if "crc32" in entry:
            crc = 0
            with path.open("rb") as f:
                while chunk := f.read(_READ_CHUNK):
                    crc = zlib.crc32(chunk, crc)
            if crc != entry["crc32"]:
                problems.append(f"{rel}: CRC-32 {crc:08x}, the manifest says {entry['crc32']:08x}")
    return problems


_ANY = object()


def complete_checkpoints(root: str | Path, run_id: Any = _ANY) -> list[Path]:
    """Complete checkpoints directly under `root`, oldest first; with `run_id`, only that run's (None:
    those written before run ids)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and is_complete(d)]
    if run_id is not _ANY:
        found = [d for d in found if read_manifest(d).get("run_id") == run_id]
    return sorted(found, key=step_of)


def run_series(root: str | Path) -> dict[str | None, list[Path]]:
    """Every run's complete checkpoints under `root` (run id -> oldest first): each run folder's own,
    and the checkpoints written directly in `root` before run folders existed (key None)."""
    root = Path(root)
    if not root.is_dir():
        return {}
    series: dict[str | None, list[Path]] = {}
    legacy = complete_checkpoints(root, run_id=None)
    if legacy:
        series[None] = legacy
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _STEP_DIR.match(p.name)):
        own = complete_checkpoints(folder, run_id=folder.name)
        if own:
            series[folder.name] = own
    return series


def first_intact(candidates: list[Path]) -> Path | None:
    """The first of `candidates` (newest first) whose files match its manifest; each one skipped is
    named in a warning, with what is wrong with it."""
    for i, candidate in enumerate(candidates):
        problems = verify(candidate)
        if not problems:
            return candidate
        then = f"falling back to {candidates[i + 1]}" if i + 1 < len(candidates) else "no older one is left"
        warnings.warn(
            f"checkpoint {candidate} does not match its manifest ({'; '.join(problems[:5])}): {then}",
            stacklevel=3,
        )
    return None


def latest_of_run(root: str | Path, run_id: str | None) -> Path | None:
    """The run's newest intact checkpoint in its folder under `root` (learner recovery, resume)."""
    folder = Path(root) if run_id is None else run_dir(root, run_id)
    return first_intact(complete_checkpoints(folder, run_id=run_id)[::-1])


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """`auto`: the newest intact checkpoint of the run under `root` that completed a checkpoint last
    (None if there is none); a path: that checkpoint, which must be complete and intact."""
    if not resume:
        return None
    if resume == "auto":
        series = run_series(root)
        if not series:
            return None
        newest = max(series.values(), key=lambda s: read_manifest(s[-1]).get("written_at", 0.0))
        return first_intact(newest[::-1])
    path = Path(resume)
    if not is_complete(path):
        found = [str(p) for s in run_series(root).values() for p in s]
        raise FileNotFoundError(
            f"checkpoint.resume={resume!r} is not a complete checkpoint (a step_NNNNNN directory with a "
            f"{MARKER} marker); complete ones under {root}: {found}"
        )
    problems = verify(path)
    if problems:
        older = [str(p) for p in complete_checkpoints(path.parent) if step_of(p) < step_of(path)]
        raise CheckpointError(
            f"resume={resume}: its files do not match its manifest ({'; '.join(problems[:5])}); "
            f"older complete checkpoints beside it: {older or 'none'}"
        )
    return path


def read_driver_state(directory: Path, restore_rng: bool = True) -> DriverState:
    """The saved driver state; with `restore_rng` also puts the driver's RNGs back where they were."""
    fields = json.loads((directory / "driver_state.json").read_text())
    state = DriverState(**{k: v for k, v in fields.items() if k in DriverState.__dataclass_fields__})
    if restore_rng:
        # Tensors and plain containers only: nothing in the file can run code when it is read.
        rng = torch.load(directory / "driver_rng.pt", weights_only=True)
        random.setstate(_as_random_state(rng["python"]))
        torch.set_rng_state(rng["torch"])
    return state


def _as_random_state(state: Any) -> tuple:
    """`random.setstate` wants (version, tuple of ints, gauss): lists become tuples again."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def prune(root: str | Path, keep_last: int, run_id: Any = _ANY) -> list[Path]:
    """Delete all but the newest `keep_last` (>= 1) complete checkpoints of `run_id` under `root` (the
    run's folder), and stale `.partial` dirs there. Another run's checkpoints are never touched."""
    if keep_last < 1:
        raise ValueError(f"checkpoint.keep_last must be at least 1, got {keep_last}")
    root = Path(root)
    removed = []
    complete = complete_checkpoints(root, run_id)
    for old in complete[: max(0, len(complete) - keep_last)]:
        shutil.rmtree(old)
        removed.append(old)
    for partial in root.glob("step_*.partial") if root.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(partial)
        removed.append(partial)
    return removed


@dataclass
class RunRecord:
    """`run.json` in a run's folder: which MLflow run it logs to, once that run exists (it may be
    created only after an outage, after the checkpoints that would otherwise carry its id)."""

    run_id: str
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def path(folder: Path) -> Path:
        return folder / "run.json"

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        try:
            data = json.loads(cls.path(folder).read_text())
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(folder).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path(folder))
