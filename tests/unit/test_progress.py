"""The per-step console line for every kind of step: GRPO, a GRPO step without an update, DPO."""

from __future__ import annotations

from rrm_ray.progress import StepPrinter, map_in_chunks


def _line(capsys, metrics: dict[str, float]) -> str:
    with StepPrinter(3) as printer:
        printer.update(1, metrics)
    return capsys.readouterr().out


def test_grpo_step_shows_kl_and_grad_norm(capsys):
    out = _line(
        capsys, {"reward/mean": 0.5, "train/approx_kl": 0.01, "train/grad_norm": 2.0, "time/update_s": 3.0}
    )
    assert "kl 0.0100" in out and "gnorm 2.00" in out


def test_step_without_update_says_so(capsys):
    out = _line(capsys, {"reward/mean": -1.0, "train/groups_trained": 0.0, "time/generate_s": 1.0})
    assert "no update" in out and "gnorm" not in out


def test_dpo_step_has_no_kl(capsys):
    out = _line(capsys, {"reward/mean": 0.0, "train/grad_norm": 3.99, "time/step_s": 1.3})
    assert "gnorm 3.99" in out


def test_the_bar_names_the_running_phase_and_a_resumed_run_starts_where_it_stopped():
    printer = StepPrinter(5, resumed_at=2)
    task = printer.progress.tasks[0]
    assert task.completed == 2
    printer.phase("generate")
    assert task.description == "step 3: generate"
    printer.update(3, {"reward/mean": 0.0, "time/step_s": 1.0})
    assert task.completed == 3 and task.description == "train"
    printer.phase("update")
    assert task.description == "step 4: update"


def test_a_resumed_console_says_the_baseline_is_the_original_runs(capsys):
    with StepPrinter(4, {"eval/reward_mean": 0.25}, resumed_at=2):
        pass
    assert (
        "held-out before training (the original run's baseline): reward_mean 0.250" in capsys.readouterr().out
    )


def test_map_in_chunks_calls_in_order_and_keeps_every_result():
    calls: list[list[int]] = []

    def double(part: list[int]) -> list[int]:
        calls.append(part)
        return [2 * x for x in part]

    assert map_in_chunks("judging", list(range(7)), double, 3) == [0, 2, 4, 6, 8, 10, 12]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert map_in_chunks("judging", [], double, 3) == []
