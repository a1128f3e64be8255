"""`rrm-ray judge --render-only` through the console script: the prompts the judge would be shown, for
both presentation orders and every CPU config, written without Ray or an engine (the tokenizer only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rrm_ray.judge.prompts import RRM_RELEASE_ANALYSIS, RRM_RELEASE_SYSTEM_PROMPT
from tests.integration.conftest import REPO, rrm_ray_cli
from tests.readme import runs_command

PAIRS = [
    {"query": "What is 2 + 2?", "response_a": "2 + 2 = 4.", "response_b": "2 + 2 = 5."},
    {"query": "Name a primary color.", "response_a": "Red.", "response_b": "Green tea."},
    {"query": "Say hi.", "response_a": "hi", "response_b": "hi"},  # identical: the judge shows nothing
]
RENDERING_KEYS = (
    "model_path",
    "mode",
    "verdict",
    "prompt_style",
    "max_prompt_tokens",
    "votes",
    "presentation",
)


def _cpu_configs() -> list[str]:
    """Every CPU config, one per distinct judge prompt set-up (a *_long twin renders as its short one)."""
    seen: dict[tuple, str] = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if path.name == "reference.yaml" or (cfg.get("cluster") or {}).get("device", "cpu") != "cpu":
            continue
        judge = cfg.get("judge") or {}
        seen.setdefault(tuple(judge.get(k) for k in RENDERING_KEYS), path.name)
    return sorted(seen.values())


CPU_CONFIGS = _cpu_configs()


def _pairs(tmp_path: Path, rows: list[dict] = PAIRS) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _render(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    out = tmp_path / "rendered.jsonl"
    proc = rrm_ray_cli("judge", "--render-only", "--data", str(_pairs(tmp_path)), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "ray").exists() and "ray.init" not in proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout


@runs_command("judge")
def test_render_only_shows_both_orders_as_the_judge_would(tmp_path):
    rows, stdout = _render(tmp_path, "--config", "configs/judge_cpu.yaml", "judge.votes=2")
    assert [r["query"] for r in rows] == [p["query"] for p in PAIRS]  # the input rows, in order
    for row in rows[:2]:
        shown = row["presentations"]
        assert [p["first"] for p in shown] in (["a", "b"], ["b", "a"])  # both orders, the coin's first
        for p in shown:
            first, second = (row["response_a"], row["response_b"])[:: 1 if p["first"] == "a" else -1]
            system, user = p["messages"]
            assert system == {"role": "system", "content": RRM_RELEASE_SYSTEM_PROMPT}  # auto: rrm_release
            assert user["content"].endswith(RRM_RELEASE_ANALYSIS)
            assert user["content"].index(first) < user["content"].index(second)
            assert p["prompt"].count(first) == 1 and 0 < p["prompt_tokens"] <= 1536 and not p["truncated"]
        assert row["over_length"] is None
    assert rows[2]["presentations"] == []
    assert "4 presentations" in stdout and "0 pairs over judge.max_prompt_tokens=1536" in stdout
    # One vote: one presentation, the seeded coin's; another seed may show the other order, the same
    # seed always the same.
    once = [r["presentations"] for r in _render(tmp_path, "--config", "configs/judge_cpu.yaml")[0]]
    assert [len(p) for p in once] == [1, 1, 0]
    assert [p[0]["first"] for p in once[:2]] == [r["presentations"][0]["first"] for r in rows[:2]]


@runs_command("judge")
def test_render_only_counts_what_does_not_fit(tmp_path):
    long = "word " * 600
    rows = [{"query": "Which is better?", "response_a": long, "response_b": "Short."}]
    out = tmp_path / "rendered.jsonl"
    data = _pairs(tmp_path, rows)
    base = ["--data", str(data), "--out", str(out), "--config", "configs/judge_cpu.yaml"]
    proc = rrm_ray_cli("judge", "--render-only", *base, "judge.max_prompt_tokens=500")  # truncate
    assert proc.returncode == 0, proc.stderr[-2000:]
    (cut,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert cut["presentations"][0]["truncated"] and cut["presentations"][0]["prompt_tokens"] <= 500
    assert "1 pairs over judge.max_prompt_tokens=500 (1 truncated" in proc.stdout
    proc = rrm_ray_cli(
        "judge", "--render-only", *base, "judge.max_prompt_tokens=500", "judge.over_length=error"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (failed,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert failed["presentations"] == [] and "judge.over_length=error" in failed["over_length"]
    assert "1 that fail the judge" in proc.stdout


@runs_command("judge")
@pytest.mark.parametrize("config", CPU_CONFIGS)
def test_render_only_with_every_cpu_config(tmp_path, config):
    rows, _ = _render(tmp_path, "--config", f"configs/{config}")
    cfg = OmegaConf.load(REPO / "configs" / config).get("judge") or {}
    for row in rows[:2]:
        assert len(row["presentations"]) >= 1 and row["over_length"] is None
        for p in row["presentations"]:
            assert p["prompt_tokens"] <= cfg.get("max_prompt_tokens", 4096)
            assert [m["role"] for m in p["messages"]] == ["system", "user"]
            assert row["query"] in p["prompt"]
