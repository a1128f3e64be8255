"""`rrm-ray eval --sweep`: grid parsing and expansion, which points share a judge session, the table
with its Wilson intervals, the table files, and the accuracy figure."""

from __future__ import annotations

import csv
import json
import re

import pytest
from PIL import Image

from rrm_ray.config import ConfigError, to_flat_dict
from rrm_ray.figures import sweep_accuracy
from rrm_ray.judge import sweep
from rrm_ray.judge.sweep import Axis, SweepError, SweepRow
from rrm_ray.stats import wilson_interval
from rrm_ray.validation import load_config

STATS = {"generated_tokens": 1200, "judge_calls": 40, "comparisons": 20}


def test_an_axis_is_a_key_and_its_values_with_short_aliases():
    assert sweep.parse_axis("judge.max_new_tokens=256, 1024,4096") == Axis(
        "judge.max_new_tokens", ("256", "1024", "4096")
    )
    assert sweep.parse_axis("votes=1,3").key == "judge.votes"
    assert sweep.parse_axis("max_new_tokens=8").key == "judge.max_new_tokens"
    assert sweep.parse_axis("think_budget=0,64").key == "judge.think_budget"
    assert sweep.parse_axis("trainer.seed=1,2").values == ("1", "2")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("judge.votes", "expected KEY=V1,V2"),
        ("=1,2", "expected KEY=V1,V2"),
        ("judge.votes=1,,3", "an empty value"),
        ("judge.votes=", "an empty value"),
        ("judge.votes=1,3,1", "'1' is listed twice"),
        ("judge-votes=1", "is not a config key"),
        ("data.on_error=raise,skip", "set it once as data.on_error=VALUE"),
        ("tracking.experiment=a,b", "judge.* keys, or trainer.seed"),
    ],
)
def test_a_bad_axis_says_what_is_wrong(option, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        sweep.parse_axis(option)


def test_a_key_swept_twice_or_also_set_once_is_an_error():
    with pytest.raises(SweepError, match=re.escape("judge.votes is swept twice")):
        sweep.parse_axes(["votes=1,3", "judge.votes=5"])
    with pytest.raises(SweepError, match=re.escape("judge.votes is swept and also set once")):
        sweep.parse_axes(["votes=1,3"], fixed_keys=["judge.votes", "judge.mode"])


def test_the_grid_is_the_cartesian_product_first_axis_slowest():
    axes = sweep.parse_axes(["max_new_tokens=256,1024", "votes=1,3,5"])
    points = sweep.expand(axes)
    assert len(points) == 6
    assert points[:4] == [
        {"judge.max_new_tokens": "256", "judge.votes": "1"},
        {"judge.max_new_tokens": "256", "judge.votes": "3"},
        {"judge.max_new_tokens": "256", "judge.votes": "5"},
        {"judge.max_new_tokens": "1024", "judge.votes": "1"},
    ]
    assert sweep.overrides(points[1]) == ["judge.max_new_tokens=256", "judge.votes=3"]
    assert sweep.label(points[1]) == "judge.max_new_tokens=256 judge.votes=3"


def test_unknown_keys_and_bad_values_fail_in_the_config_like_any_override():
    """The CLI builds each point's config from its overrides: the config's own errors name the key."""
    for bad, message in (
        ("judge.max_new_tokenz=8", "unknown config key 'judge.max_new_tokenz'"),
        ("judge.votes=three", "bad value for config key 'judge.votes'"),
        ("judge.votes=0", "judge.votes"),
    ):
        point = sweep.expand([sweep.parse_axis(bad)])[0]
        with pytest.raises(ConfigError, match=message):
            load_config(None, sweep.overrides(point))


def test_sampling_time_points_share_one_session_engine_keys_split_them():
    def flat(*overrides: str) -> dict:
        return to_flat_dict(load_config(None, ["judge.max_model_len=20000", *overrides]))

    sampling = [flat(f"judge.max_new_tokens={b}", f"judge.votes={k}") for b in (256, 1024) for k in (1, 3)]
    assert sweep.session_groups(sampling) == [[0, 1, 2, 3]]
    mixed = [flat(f"judge.kv_cache_gib={g}", f"judge.votes={k}") for k in (1, 3) for g in (1, 2)]
    assert sweep.session_groups(mixed) == [[0, 2], [1, 3]]  # by engine, in order of first appearance
    assert sweep.engine_keys(["judge.votes", "judge.kv_cache_gib", "trainer.seed"]) == [
        "judge.kv_cache_gib",
        "trainer.seed",
    ]


def test_every_session_key_is_a_judge_config_key():
    judge_keys = {k for k in to_flat_dict(load_config(None)) if k.startswith("judge.")}
    assert judge_keys >= sweep.SESSION_KEYS
    # what an engine is built from is not among them
    assert not {"judge.model_path", "judge.max_model_len", "judge.kv_cache_gib"} & sweep.SESSION_KEYS


def test_a_row_carries_its_wilson_interval_with_half_credits_as_half_successes():
    row = SweepRow.from_scores(2, {"judge.votes": "3"}, 7.5, 10, STATS, 12.34, "run")
    assert row.accuracy == 0.75 and (row.ci_low, row.ci_high) == wilson_interval(7.5, 10)
    assert row.ci_low < 0.75 < row.ci_high
    assert (row.generated_tokens, row.judge_calls, row.comparisons) == (1200, 40, 20)
    full = SweepRow.from_scores(0, {}, 4, 4, STATS, 1.0)
    assert full.ci_high == pytest.approx(1.0) and full.ci_low < 1.0


def _rows() -> list[SweepRow]:
    return [
        SweepRow.from_scores(
            i,
            {"judge.max_new_tokens": b, "judge.votes": k},
            s,
            20,
            {"generated_tokens": int(b) * int(k) * 20, "judge_calls": int(k) * 20, "comparisons": 20},
            float(i + 1),
        )
        for i, (b, k, s) in enumerate(
            [("256", "1", 10), ("256", "3", 12), ("1024", "1", 13), ("1024", "3", 16)]
        )
    ]


def test_the_table_has_a_line_per_point_with_the_swept_values():
    keys = ["judge.max_new_tokens", "judge.votes"]
    lines = sweep.points_table(keys, _rows()).splitlines()
    assert lines[0].split() == [
        "max_new_tokens",
        "votes",
        "n",
        "accuracy",
        "95%",
        "CI",
        "judge",
        "tokens",
        "judge",
        "calls",
        "seconds",
    ]
    assert set(lines[1]) <= {"-", " "} and len(lines) == 6
    low, high = wilson_interval(16, 20)
    assert lines[5].split() == ["1024", "3", "20", "0.800", f"{low:.3f}-{high:.3f}", "61440", "60", "4.0"]


def test_short_names_keep_the_full_key_when_two_would_clash():
    assert sweep.short_names(["judge.votes", "trainer.seed"]) == ["votes", "seed"]
    assert sweep.short_names(["judge.seed", "trainer.seed"]) == ["judge.seed", "trainer.seed"]


def test_the_table_is_written_as_json_or_csv(tmp_path):
    keys = ["judge.max_new_tokens", "judge.votes"]
    records = json.loads(sweep.write_table(keys, _rows(), tmp_path / "t.json").read_text())
    assert records[3]["judge.votes"] == "3" and records[3]["accuracy"] == 0.8 and len(records) == 4
    with sweep.write_table(keys, _rows(), tmp_path / "sub" / "t.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table[0]["judge.max_new_tokens"] == "256" and float(table[0]["accuracy"]) == 0.5
    with pytest.raises(SweepError, match=re.escape("written as .json or .csv")):
        sweep.check_table_path(tmp_path / "t.txt")


def test_the_figure_puts_the_thinking_budget_on_x_and_a_line_per_vote_count(tmp_path):
    assert sweep.figure_axes(["judge.votes", "judge.max_new_tokens"]) == (
        "judge.max_new_tokens",
        ["judge.votes"],
    )
    assert sweep.figure_axes(["judge.votes"]) == ("judge.votes", [])
    assert sweep.figure_axes(["judge.mode", "judge.think_budget"]) == ("judge.think_budget", ["judge.mode"])
    keys = ["judge.max_new_tokens", "judge.votes"]
    path = sweep_accuracy(
        sweep.table_records(keys, _rows()), "judge.max_new_tokens", ["judge.votes"], tmp_path / "f.png"
    )
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", (1000, 450))
    # non-numeric values sit evenly spaced; nothing to draw gives no file
    records = [
        dict(r, **{"judge.mode": m})
        for r, m in zip(sweep.table_records(keys, _rows()[:2]), ["rrm", "direct"], strict=True)
    ]
    assert sweep_accuracy(records, "judge.mode", [], tmp_path / "g.png").is_file()
    assert sweep_accuracy([], "judge.votes", [], tmp_path / "none.png") is None
