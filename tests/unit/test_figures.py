"""The figures MLflow does not draw: each writes a PNG of its fixed size, or nothing without data."""

from __future__ import annotations

import pytest
from PIL import Image

from rrm_ray import figures

HISTORY = {
    "time/generate_s": [(1, 3.0), (2, 2.5), (3, 2.7)],
    "time/reward_s": [(1, 1.0), (2, 1.2), (3, 0.9)],
    "time/update_s": [(1, 4.0), (2, 4.1), (2, 3.9), (3, 4.2)],  # step 2 logged again (a resume)
    "time/step_s": [(1, 8.0), (2, 7.8), (3, 7.8)],
    "judge/verifier_pair_agreement": [(1, 0.5), (3, 0.75)],
    "judge/verifier_pick_agreement": [(1, 1.0), (2, 0.5), (3, 1.0)],
    "judge/judge_calls": [(1, 12.0), (2, 10.0), (3, 9.0)],
    "judge/cache_hits": [(1, 0.0), (2, 2.0), (3, 3.0)],
    "eval/accuracy": [(0, 0.5), (3, 0.6)],
    "eval/accuracy_ci_low": [(0, 0.38), (3, 0.48)],
    "eval/accuracy_ci_high": [(0, 0.62), (3, 0.71)],
    "eval/accuracy_better_first": [(0, 0.0), (3, 0.4)],
    "eval/accuracy_better_second": [(0, 1.0), (3, 0.8)],
}

REWARDBENCH = {
    "accuracy/alpacaeval-easy": 0.9,
    "accuracy/mt-bench-hard": 0.6,
    "accuracy/refusals-dangerous": 0.7,
    "accuracy/math-prm": 0.8,
    "accuracy/all_items": 0.75,  # the plain mean, not a subset
    "section/Chat": 0.9,
    "section/Chat Hard": 0.6,
    "section/Safety": 0.7,
    "section/Reasoning": 0.8,
    "overall": 0.75,
}


def _size(path):
    with Image.open(path) as im:
        im.verify()  # a complete, readable PNG
    with Image.open(path) as im:
        return im.format, im.size


@pytest.mark.parametrize(
    ("draw", "data", "size"),
    [
        (figures.phase_seconds, HISTORY, (1000, 450)),
        (figures.judge_agreement, HISTORY, (1000, 600)),
        (figures.judge_agreement, {"judge/judge_calls": [(1, 4.0)]}, (1000, 600)),  # no verifier data
        (figures.learning_curve, HISTORY, (1000, 450)),
        (figures.learning_curve, {"eval/accuracy": [(0, 0.1), (5, 0.9)]}, (1000, 450)),  # no band
        (figures.rewardbench_scores, REWARDBENCH, (1000, 600)),
        (figures.rewardbench_scores, {"accuracy/chat": 1.0}, (1000, 600)),  # a file without sections
    ],
)
def test_figure_is_a_png_of_its_size(tmp_path, draw, data, size):
    path = draw(data, tmp_path / "sub" / "figure.png")
    assert path == tmp_path / "sub" / "figure.png"
    assert _size(path) == ("PNG", size)


@pytest.mark.parametrize(
    ("draw", "data"),
    [
        (figures.phase_seconds, {"time/step_s": [(1, 8.0)], "reward/mean": [(1, 0.5)]}),
        (figures.judge_agreement, {"time/generate_s": [(1, 1.0)]}),
        (figures.learning_curve, {"eval/accuracy": [(0, 0.5)]}),  # one evaluation is not a curve
        (figures.rewardbench_scores, {"accuracy/all_items": 0.5, "judge/seconds": 3.0}),
    ],
)
def test_nothing_to_draw_writes_nothing(tmp_path, draw, data):
    assert draw(data, tmp_path / "figure.png") is None
    assert not (tmp_path / "figure.png").exists()
