"""The benchmark passes and output records of `rrm-ray eval | best-of-n` on plain judge functions:
the side a response is shown on never changes its credit, and samples regroup per prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from rrm_ray.judge import best_of_n as bon
from rrm_ray.judge.benchmarks import load_pandalm, load_rewardbench
from rrm_ray.judge.evaluation import pandalm_pass, rewardbench_pass, trace_rows
from rrm_ray.judge.records import JudgePair, JudgeTrace, PairJudgment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def prefers(good: set[str]):
    """A judge that votes for whichever side's text is in `good`, wherever it is shown."""

    def judge(pairs: list[JudgePair]) -> list[PairJudgment]:
        out = []
        for p in pairs:
            a_wins = p.response_a in good
            trace = JudgeTrace(0, "ab", "because", 1 if a_wins else 2, "a" if a_wins else "b")
            out.append(
                PairJudgment("a" if a_wins else "b", int(a_wins), int(not a_wins), 1, 0, 0, 0, [trace])
            )
        return out

    return judge


def test_rewardbench_credit_follows_the_response_not_its_side():
    items = load_rewardbench(FIXTURES / "rewardbench_tiny.jsonl").items
    right = rewardbench_pass(items, prefers({it.chosen for it in items}), seed=3, traces=2)
    wrong = rewardbench_pass(items, prefers({it.rejected for it in items}), seed=3, traces=2)
    assert right.metrics["accuracy/all_items"] == 1.0 and right.successes == len(items) == right.n
    assert wrong.metrics["accuracy/all_items"] == 0.0 and wrong.successes == 0
    assert {r["chosen_shown_as"] for r in rewardbench_pass(items, prefers(set()), 3, 99).traces} == {"a", "b"}
    assert len(right.traces) == 2 and right.traces[0]["credit"] == 1.0
    assert any(line.startswith("mean credit over all items") for line in right.report)


def test_pandalm_predictions_name_the_response_not_the_side():
    items = load_pandalm(FIXTURES / "pandalm_tiny.json").items
    scored = pandalm_pass(items, prefers({it.response1 for it in items}), seed=0, traces=100)
    assert [row["prediction"] for row in scored.traces] == [1] * len(items)
    assert scored.successes == sum(it.label == 1 for it in items) and scored.n == len(items)
    assert scored.report[0].startswith("\nPandaLM: 6 items")


def test_trace_rows_stop_at_the_limit_and_mark_timeouts():
    timed_out = JudgeTrace(0, "ba", None, None, None)
    judgment = PairJudgment(None, 0, 0, 2, 0, 0, 1, [timed_out, timed_out])
    rows = trace_rows(["x", "y"], [judgment, judgment], [{}, {}], limit=3)
    assert [r["id"] for r in rows] == ["x", "x", "y"] and rows[0]["text"] == "<timed out>"


def test_samples_regroup_per_prompt_and_unanswered_prompts_have_no_flags():
    index = [0, 0, 1, 1, 2, 2]
    assert bon.per_prompt(index, list("abcdef"), 3) == [["a", "b"], ["c", "d"], ["e", "f"]]
    flags = bon.correct_flags(["4", None, "7"], index, [True, False, None, None, False, False])
    assert flags == [[True, False], None, [False, False]]
    with pytest.raises(ValueError):
        bon.per_prompt(index, ["a"], 3)  # one value per sample


def test_rewardbench_fixture_over_length_count_at_the_cpu_config_limits():
    """configs/judge_cpu.yaml (SmolLM2's tokenizer, the release's prompt, 1536 prompt tokens): every
    RewardBench fixture item fits in both orders. At a limit the longer items do not fit, the service
    counts exactly those pairs (judge/over_length_pairs) and leaves them undecided (skip)."""
    from rrm_ray.judge.prompts import PromptTooLongError
    from rrm_ray.judge.records import JudgeSettings
    from rrm_ray.judge.service import JudgeService, presentations
    from rrm_ray.models import load_tokenizer, resolve_model_path
    from rrm_ray.validation import load_config

    cfg = load_config("configs/judge_cpu.yaml", ["judge.votes=2", "judge.over_length=error"])
    tokenizer = load_tokenizer(resolve_model_path(cfg.judge.model_path))
    items = load_rewardbench(FIXTURES / "rewardbench_tiny.jsonl").items
    pairs = [JudgePair(it.prompt, it.chosen, it.rejected) for it in items]
    settings = JudgeSettings.from_config(cfg.judge, cfg.trainer.seed)
    lengths = [max(p["prompt_tokens"] for p in presentations(tokenizer, settings, pair)) for pair in pairs]
    assert len(pairs) == 13 and max(lengths) <= cfg.judge.max_prompt_tokens  # over length: 0 of 13

    limit = sorted(lengths)[len(lengths) // 2]  # about half the items are longer
    tight = JudgeSettings.from_config(
        load_config("configs/judge_cpu.yaml", ["judge.votes=2", f"judge.max_prompt_tokens={limit}"]).judge,
        cfg.trainer.seed,
    )
    assert tight.over_length == "truncate"  # judge_cpu.yaml cuts, counted
    skip = JudgeSettings(**{**tight.__dict__, "over_length": "skip"})
    service = JudgeService(
        lambda prompts, n: [["</think>\\boxed{Assistant 1}"] * n] * len(prompts), tokenizer, skip
    )
    out = service.compare(pairs)
    longer = [n > limit for n in lengths]
    assert service.stats.over_length_pairs == service.stats.skipped == sum(longer) > 0
    assert [j.error is not None for j in out] == longer
    for pair, over in zip(pairs, longer, strict=True):
        if over:
            with pytest.raises(PromptTooLongError):
                presentations(tokenizer, skip, pair)
