"""The judge actor through real Ray + vLLM (CPU): the tiny random model (garbage outputs, time-outs),
SmolLM2 on a few pairs, and `rrm-ray eval` as a user runs it. One engine per model for the module, and
only one alive at a time (the tests that start their own engine come first)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from rrm_ray.judge.records import JudgePair
from rrm_ray.validation import load_config
from tests.integration.conftest import REPO, rrm_ray_cli
from tests.readme import runs_command

pytestmark = pytest.mark.integration

PAIRS = [
    JudgePair("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    JudgePair("Name a primary color.", "Red.", "Green tea."),
    JudgePair("Capital of France?", "Paris.", "Lyon, I think."),
]


def judge_overrides(model: str, **extra: object) -> list[str]:
    base = {
        "judge.model_path": model,
        "judge.max_model_len": 1024,  # the tiny model has 1024 positions
        "judge.max_prompt_tokens": 768,
        "judge.max_new_tokens": 12,
        "judge.kv_cache_gib": 1,
        "judge.threads": 1,
        "judge.votes": 2,
        "judge.tie_rule": "none",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_smollm2_judges_a_few_pairs(ray_local):
    from rrm_ray.jobs.judging import judge_session
    from rrm_ray.models import ensure_smollm2

    cfg = load_config(
        None,
        judge_overrides(str(ensure_smollm2()), **{"judge.max_new_tokens": 48, "judge.votes": 1}),
    )
    with judge_session(cfg) as judge:
        out = judge.compare(PAIRS)
        stats = judge.stats()
    assert len(out) == 3 and all(len(j.traces) == 1 and j.traces[0].text for j in out)
    decided = sum(j.decided for j in out)
    assert stats["unparseable"] + decided == 3 and stats["timed_out"] == 0


@runs_command("eval")
def test_eval_cli_on_rewardbench_fixture(tiny_model, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        "eval",
        "--benchmark",
        "rewardbench",
        "--data",
        str(REPO / "tests/fixtures/rewardbench_tiny.jsonl"),
        "--method",
        "rrm",
        "--votes",
        "1",
        "--limit",
        "3",
        *judge_overrides(tiny_model, **{"judge.max_new_tokens": 8}),
        f"tracking.uri={uri}",
        "tracking.experiment=judge-eval",
        "cluster.local_num_cpus=4",
        f"checkpoint.dir={tmp_path / 'run'}",
    ]
    proc = rrm_ray_cli(*cmd, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean credit over all items" in proc.stdout and "alpacaeval-easy" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("judge-eval").experiment_id])
    assert run.data.metrics["judge/comparisons"] == 3
    # Random weights write no verdict: every item earns the half credit.
    assert run.data.metrics["accuracy/all_items"] == 0.5
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert "figures/rewardbench_scores.png" in figures  # per-subset accuracy and the section scores
    path = client.download_artifacts(run.info.run_id, "tables/judge_traces.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    assert len(table["data"]) == 3 and "text" in table["columns"]


@pytest.fixture(scope="module")
def tiny_judge(ray_local, tiny_model):
    from rrm_ray.jobs.judging import judge_session

    with judge_session(load_config(None, judge_overrides(tiny_model))) as judge:
        yield judge


def test_garbage_outputs_are_unparseable_and_cached(tiny_judge):
    tiny_judge.stats(reset=True)
    out = tiny_judge.compare(PAIRS)
    stats = tiny_judge.stats(reset=True)
    assert [j.winner for j in out] == [None, None, None]  # no verdict, tie rule "none"
    for j in out:
        assert j.votes == 2 and j.unparseable == 2 and j.timed_out == 0
        assert {t.order for t in j.traces} == {"ab", "ba"} and all(isinstance(t.text, str) for t in j.traces)
    assert (stats["judge_calls"], stats["waves"], stats["unparseable"]) == (6, 1, 6)
    assert stats["generated_tokens"] > 0
    again = tiny_judge.compare(PAIRS)
    assert all(j.from_cache for j in again) and tiny_judge.stats(reset=True)["judge_calls"] == 0


def test_rank_runs_one_wave_per_round(tiny_judge):
    items = [("Say hi.", ["hi", "hello", "hey there"]), ("Count to 3.", ["1 2 3", "one two three", "3 2 1"])]
    tiny_judge.stats(reset=True)
    results = tiny_judge.rank(items, method="knockout")
    stats = tiny_judge.stats(reset=True)
    assert stats["waves"] == 2  # ceil(log2 3) rounds, both queries in each wave
    for r in results:
        assert len(r.comparisons) == 2 and sorted(r.ranking) == [0, 1, 2] and r.rewards[r.winner] == 1.0
    # Round robin: every match undecided (no verdicts), so no preference and flat rewards.
    for r in tiny_judge.rank(items, method="elo"):
        assert len(r.comparisons) == 3 and r.rewards == [0.0, 0.0, 0.0]


def test_a_tiny_batch_timeout_aborts_and_counts(tiny_judge, tiny_model):
    fresh = [JudgePair(p.query + " Briefly.", p.response_a, p.response_b) for p in PAIRS]
    tiny_judge.stats(reset=True)
    tiny_judge.configure(
        load_config(None, judge_overrides(tiny_model, **{"judge.batch_timeout_s": 1e-6})).judge
    )
    try:
        out = tiny_judge.compare(fresh)
        stats = tiny_judge.stats(reset=True)  # read before configure starts the counters anew
    finally:
        tiny_judge.configure(load_config(None, judge_overrides(tiny_model)).judge)
    assert all(j.timed_out == 2 and j.winner is None for j in out)
    assert stats["timed_out"] == 6 and stats["unparseable"] == 0
    # The aborted requests left nothing behind: the same pairs (not cached) now get real texts.
    assert all(t.text is not None for j in tiny_judge.compare(fresh) for t in j.traces)


def test_choice_prob_is_one_forward_per_order_and_reuses_the_query_prefix(tiny_judge, tiny_model):
    """judge.verdict=choice_prob (set on the running engine, as a sweep point is): a verdict for every
    match from one single-token forward per presentation order; the second knockout round re-reads
    the query's prompt head from vLLM's prefix cache (on by default; the head is longer than a KV
    block: 128 tokens on CPU, 16 on GPU)."""
    extra = {"judge.mode": "direct", "judge.verdict": "choice_prob", "judge.votes": 1}
    tiny_judge.configure(load_config(None, judge_overrides(tiny_model, **extra)).judge)
    query = "Which answer states every fact? " + " ".join(f"fact {i} holds." for i in range(40))
    try:
        (result,) = tiny_judge.rank([(query, ["All hold.", "Some hold.", "None hold.", "Facts 1-3 hold."])])
        stats = tiny_judge.stats(reset=True)
    finally:
        tiny_judge.configure(load_config(None, judge_overrides(tiny_model)).judge)
    matches = result.comparisons
    assert len(matches) == 3  # knockout of 4: two rounds
    assert all(m.judgment.prob_a is not None and m.outcome in ("a", "b") for m in matches)
    assert stats["judge_calls"] == stats["generated_tokens"] == 2 * len(matches)  # 1 token per order
    assert stats["waves"] == 2 and stats["prompts_judged"] == 1
    assert 0 < stats["prefix_cached_tokens"] < stats["prefill_tokens"]
    assert stats["tokens_per_prompt"] == 6 and stats["seconds_per_prompt"] > 0
