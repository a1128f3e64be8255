"""The per-step console line for every kind of step: GRPO, a GRPO step without an update, DPO."""

from __future__ import annotations

from rrm_ray.progress import StepPrinter


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
