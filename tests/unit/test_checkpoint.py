import random

import pytest
import torch

from rrm_ray import checkpoint as ck


def save(root, step, position=0):
    partial = ck.begin(root, step)
    (partial / "learner").mkdir()
    ck.write_driver_state(partial, ck.DriverState(step, position, "run-1", {}), "a: 1\n")
    return ck.commit(partial, {"step": step})


def test_only_complete_checkpoints_are_found(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 10)
    killed = ck.begin(tmp_path, 12)  # a write that never finished
    (killed / "learner").mkdir()
    no_marker = tmp_path / "step_000014"
    no_marker.mkdir()  # renamed by hand, but no COMPLETE marker
    assert [p.name for p in ck.complete_checkpoints(tmp_path)] == ["step_000002", "step_000010"]
    assert ck.resolve_resume("auto", tmp_path).name == "step_000010"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ck.resolve_resume(str(no_marker), tmp_path)


def test_resume_none_and_empty(tmp_path):
    assert ck.resolve_resume(None, tmp_path) is None
    assert ck.resolve_resume("auto", tmp_path / "nothing") is None


def test_driver_state_and_rng_round_trip(tmp_path):
    random.seed(3)
    torch.manual_seed(3)
    path = save(tmp_path, 4, position=17)
    expected = (random.random(), torch.rand(2))
    random.seed(99)
    torch.manual_seed(99)
    state = ck.read_driver_state(path)
    assert (state.step, state.data_position, state.mlflow_run_id) == (4, 17, "run-1")
    got = (random.random(), torch.rand(2))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])


def test_retention_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    ck.begin(tmp_path, 5)
    ck.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000004"]
