import json
import os
import random
import time

import pytest
import torch

from rrm_ray import checkpoint as ck


def save(root, step, position=0, run_id="run-a"):
    """A checkpoint of `run_id` at `step` in its run folder under `root` (a learner file included)."""
    folder = ck.run_dir(root, run_id) if run_id else root
    partial = ck.begin(folder, step)
    (partial / "learner").mkdir()
    (partial / "learner" / "shard_0.bin").write_bytes(os.urandom(1000))
    ck.write_driver_state(partial, ck.DriverState(step, position, "mlflow-1", {}, run_id), "a: 1\n")
    return ck.commit(partial, {"step": step}, run_id)


def test_only_complete_checkpoints_are_found(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 10)
    folder = ck.run_dir(tmp_path, "run-a")
    killed = ck.begin(folder, 12)  # a write that never finished
    (killed / "learner").mkdir()
    no_marker = folder / "step_000014"
    no_marker.mkdir()  # renamed by hand, but no COMPLETE marker
    assert [p.name for p in ck.complete_checkpoints(folder)] == ["step_000002", "step_000010"]
    assert ck.resolve_resume("auto", tmp_path) == folder / "step_000010"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ck.resolve_resume(str(no_marker), tmp_path)


def test_resume_none_and_empty(tmp_path):
    assert ck.resolve_resume(None, tmp_path) is None
    assert ck.resolve_resume("auto", tmp_path / "nothing") is None


def test_driver_state_and_rng_round_trip_without_unpickling_code(tmp_path):
    random.seed(3)
    torch.manual_seed(3)
    path = save(tmp_path, 4, position=17)
    expected = (random.random(), torch.rand(2))
    random.seed(99)
    torch.manual_seed(99)
    state = ck.read_driver_state(path)
    assert (state.step, state.data_position, state.run_id) == (4, 17, "run-a")
    assert state.mlflow_run_id == "mlflow-1"
    got = (random.random(), torch.rand(2))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])
    # The RNG file holds nothing that weights_only=True refuses (read_driver_state loads it so).
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path / "driver_rng.pt") == []


def test_retention_keeps_the_newest_of_the_run_and_needs_at_least_one(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    folder = ck.run_dir(tmp_path, "run-a")
    ck.begin(folder, 5)
    ck.prune(folder, keep_last=2, run_id="run-a")
    assert sorted(p.name for p in folder.iterdir()) == ["step_000003", "step_000004"]
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        ck.prune(folder, keep_last=0, run_id="run-a")


def test_two_runs_in_one_folder_keep_and_resume_their_own(tmp_path):
    """An older run with steps 10 and 15 in the dir: a new run's step 5 is not pruned by them, its
    recovery picks its own latest, and resume=auto continues the run that checkpointed last."""
    save(tmp_path, 10, run_id="old")
    save(tmp_path, 15, run_id="old")
    time.sleep(0.01)
    save(tmp_path, 5, run_id="new")
    assert ck.prune(ck.run_dir(tmp_path, "new"), keep_last=2, run_id="new") == []
    assert ck.latest_of_run(tmp_path, "new") == ck.run_dir(tmp_path, "new") / "step_000005"
    assert ck.latest_of_run(tmp_path, "old") == ck.run_dir(tmp_path, "old") / "step_000015"
    assert ck.resolve_resume("auto", tmp_path) == ck.run_dir(tmp_path, "new") / "step_000005"
    # A checkpoint of another run copied into a run's folder is not that run's: never pruned, never used.
    stranger = save(tmp_path, 20, run_id="old")
    stranger.rename(ck.run_dir(tmp_path, "new") / "step_000020")
    assert ck.latest_of_run(tmp_path, "new").name == "step_000005"
    ck.prune(ck.run_dir(tmp_path, "new"), keep_last=1, run_id="new")
    assert (ck.run_dir(tmp_path, "new") / "step_000020").is_dir()


def test_a_new_run_never_replaces_another_runs_checkpoint(tmp_path):
    save(tmp_path, 3, run_id="a")
    partial = ck.begin(ck.run_dir(tmp_path, "a"), 3)
    with pytest.raises(ck.CheckpointError, match="a complete checkpoint of run 'a', not of this run"):
        ck.commit(partial, {"step": 3}, "b")


def test_the_manifest_lists_every_file_and_a_damaged_checkpoint_falls_back(tmp_path):
    first, second = save(tmp_path, 1), save(tmp_path, 2)
    files = ck.read_manifest(second)["files"]
    assert set(files) == {"driver_state.json", "driver_rng.pt", "config.yaml", "learner/shard_0.bin"}
    assert files["learner/shard_0.bin"]["size"] == 1000 and "crc32" in files["learner/shard_0.bin"]
    assert ck.verify(second) == []
    shard = second / "learner" / "shard_0.bin"
    shard.write_bytes(b"\0" + shard.read_bytes()[1:])  # the same size, one byte changed
    assert ck.verify(second) == [
        f"learner/shard_0.bin: CRC-32 {ck.zlib.crc32(shard.read_bytes()):08x}, the manifest says "
        f"{files['learner/shard_0.bin']['crc32']:08x}"
    ]
    with pytest.warns(UserWarning, match=r"step_000002 does not match its manifest .* falling back to"):
        assert ck.resolve_resume("auto", tmp_path) == first
    with pytest.warns(UserWarning, match="does not match its manifest"):
        assert ck.latest_of_run(tmp_path, "run-a") == first
    with pytest.raises(ck.CheckpointError, match=r"do not match its manifest .*beside it: .*step_000001"):
        ck.resolve_resume(str(second), tmp_path)
    (first / "driver_state.json").unlink()
    assert ck.verify(first) == ["driver_state.json: missing"]


def test_checkpoints_written_before_run_folders_are_one_more_series(tmp_path):
    legacy = ck.begin(tmp_path, 7)
    (legacy / "driver_state.json").write_text(
        json.dumps({"step": 7, "data_position": 3, "mlflow_run_id": "m", "extra": {}})
    )
    (legacy / ck.MARKER).write_text(json.dumps({"written_at": time.time(), "step": 7}))
    legacy = legacy.rename(tmp_path / "step_000007")
    assert ck.resolve_resume("auto", tmp_path) == legacy
    assert ck.read_driver_state(legacy, restore_rng=False).run_id is None


def test_run_ids_sort_by_start_time_and_differ():
    a, b = ck.new_run_id("grpo"), ck.new_run_id("grpo")
    assert a.startswith("grpo-") and a != b


def test_the_run_record_keeps_the_mlflow_run_once_it_exists(tmp_path):
    assert ck.RunRecord.read(tmp_path) is None
    ck.RunRecord("run-a", "mlflow-7").write(tmp_path / "run-a")
    assert ck.RunRecord.read(tmp_path / "run-a") == ck.RunRecord("run-a", "mlflow-7")
