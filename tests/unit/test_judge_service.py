"""JudgeService with a scripted engine: batching per wave, cache, both orders, adaptive voting,
tournaments over many queries, time-outs and unparseable outputs. A real (tiny, offline) tokenizer."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rrm_ray.judge.prompts import CHOICE_PREFIX, PromptTooLongError, choice_token_ids, complete_choice
from rrm_ray.judge.records import JudgeInputError, JudgePair, JudgeSettings, flip_judgment, judge_rates
from rrm_ray.judge.service import JudgeService

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_ANSWER = re.compile(
    r"\[The Start of Assistant ([12])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["Which assistant's answer is better? Think about the answer."] * 20, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    hf.chat_template = TEMPLATE
    return hf


class FakeJudge:
    """A judge that knows a hidden quality per response ("r<q>...": higher q is better) and writes
    ``<think>...</think> \\boxed{Assistant k}``. Responses containing GARBAGE get text without a
    verdict, SLOW ones time out (None), FIRST makes it always pick Assistant 1 (position bias).
    ``calls`` records every generate call as (number of prompts, n)."""

    def __init__(self, style: str = "rrm") -> None:
        self.calls: list[tuple[int, int]] = []
        self.prompts: list[str] = []  # every prompt it was given, decoded
        self.style = style
        self.tokenizer = None  # set by `service`: prompts arrive as token ids

    def text(self, ids: list[int]) -> str:
        assert isinstance(ids, list) and all(isinstance(t, int) for t in ids)  # token ids, not text
        return self.tokenizer.decode(ids)

    @staticmethod
    def quality(text: str) -> int:
        m = re.match(r"r(\d+)", text)
        return int(m.group(1)) if m else 0

    def one(self, prompt: str) -> str | None:
        shown = dict(_ANSWER.findall(prompt))
        first, second = shown["1"], shown["2"]
        if "SLOW" in first + second:
            return None
        if "GARBAGE" in first + second:
            return "I cannot decide </think> maybe both"
        pick = 1 if "FIRST" in first + second or self.quality(first) > self.quality(second) else 2
        verdict = f"\\boxed{{Assistant {pick}}}"
        return verdict if self.style == "direct" else f"Let me compare them.</think> {verdict}"

    def __call__(self, prompts: list[list[int]], n: int) -> list[list[str] | None]:
        self.calls.append((len(prompts), n))
        out = []
        for ids in prompts:
            prompt = self.text(ids)
            self.prompts.append(prompt)
            text = self.one(prompt)
            out.append(None if text is None else [text] * n)
        return out


def service(tokenizer, judge=None, **settings) -> tuple[JudgeService, FakeJudge]:
    """A service over the fake judge; the MT-Bench layout (the fake reads its answer fences)."""
    judge = judge or FakeJudge()
    judge.tokenizer = tokenizer
    settings.setdefault("prompt_style", "mtbench")
    return JudgeService(judge, tokenizer, JudgeSettings(**settings)), judge


def pair(qa: int, qb: int, q: str = "Which is better?", tag: str = "") -> JudgePair:
    return JudgePair(q, f"r{qa} answer{tag}", f"r{qb} answer{tag}")


# ---- compare ------------------------------------------------------------------------------------
def test_all_pairs_go_into_one_generate_call_per_wave(tokenizer):
    svc, judge = service(tokenizer, votes=1)
    pairs = [pair(3, 1), pair(1, 4), pair(5, 9, q="Another question?")]
    out = svc.compare(pairs)
    assert [j.winner for j in out] == ["a", "b", "b"]
    assert judge.calls == [(3, 1)]
    assert all(j.votes == 1 and len(j.traces) == 1 and not j.from_cache for j in out)
    assert svc.stats.judge_calls == 3 and svc.stats.waves == 1 and svc.stats.comparisons == 3


@pytest.mark.parametrize(
    "votes, adaptive, calls, saved",
    [(2, True, [(6, 1)], 0), (4, False, [(6, 2)], 0), (5, True, [(9, 1)], 2), (5, False, [(15, 1)], 0)],
)
def test_votes_show_both_orders_and_adaptive_stops_early(tokenizer, votes, adaptive, calls, saved):
    svc, judge = service(tokenizer, votes=votes, adaptive_votes=adaptive)
    out = svc.compare([pair(2, 7), pair(8, 1), pair(4, 6, q="Third?")])
    assert [j.winner for j in out] == ["b", "a", "b"]
    assert judge.calls == calls  # k=4: each order's prompt sent once with n=2
    for j in out:
        assert {t.order for t in j.traces} == {"ab", "ba"}
        assert j.calls_saved == saved and j.votes == votes - saved
        assert j.wins_a + j.wins_b == j.votes and j.decided
        # Every trace says who won in pair terms, whatever order it was shown in.
        assert {t.winner for t in j.traces} == {j.winner}
        assert all(t.verdict == (1 if (t.order == "ab") == (t.winner == "a") else 2) for t in j.traces)
    assert svc.stats.calls_saved == 3 * saved


def test_split_votes_need_another_wave(tokenizer):
    # A fully position-biased judge: each order wins once, so k=3 needs a third (tie-breaking) vote.
    svc, judge = service(tokenizer, votes=3, adaptive_votes=True)
    (j,) = svc.compare([JudgePair("q", "r1 FIRST a", "r2 FIRST b")])
    assert judge.calls == [(2, 1), (1, 1)]
    assert sorted((j.wins_a, j.wins_b)) == [1, 2] and (j.votes, j.calls_saved) == (3, 0)
    assert [t.order for t in j.traces] == ["ab", "ba", "ab"] or [t.order for t in j.traces] == [
        "ba",
        "ab",
        "ba",
    ]


def test_cache_answers_repeats_in_either_order(tokenizer):
    svc, judge = service(tokenizer, votes=2)
    first = svc.compare([pair(1, 2), pair(6, 3)])
    again = svc.compare([pair(1, 2), JudgePair("Which is better?", "r3 answer", "r6 answer")])
    assert len(judge.calls) == 1  # the second batch made no judge call
    assert [j.winner for j in again] == ["b", "b"] and all(j.from_cache and j.votes == 0 for j in again)
    assert again[0].traces == first[0].traces  # reasoning texts and orders survive the cache
    assert again[1] == dataclasses.replace(flip_judgment(first[1]), votes=0, from_cache=True)
    assert svc.stats.cache_hits == 2
    svc.compare([pair(1, 2)], votes=4)  # other settings: a new key, a new judgment
    assert len(judge.calls) == 2


def test_a_pair_twice_in_one_batch_is_judged_once(tokenizer):
    svc, judge = service(tokenizer, votes=1)
    out = svc.compare([pair(1, 2), JudgePair("Which is better?", "r2 answer", "r1 answer"), pair(1, 2)])
    assert judge.calls == [(1, 1)]
    assert [j.winner for j in out] == ["b", "a", "b"]
    assert [j.from_cache for j in out] == [False, True, True]


@pytest.mark.parametrize("tie_rule, winner", [("first", "a"), ("none", None)])
def test_identical_responses_need_no_judge(tokenizer, tie_rule, winner):
    svc, judge = service(tokenizer, tie_rule=tie_rule)
    (j,) = svc.compare([JudgePair("q", "same", "same")])
    assert judge.calls == [] and j.winner == winner and j.votes == 0 and not j.decided
    assert svc.stats.identical == 1


@pytest.mark.parametrize("tie_rule, winner", [("first", "a"), ("none", None)])
def test_unparseable_outputs_are_no_votes(tokenizer, tie_rule, winner):
    svc, _ = service(tokenizer, votes=2, tie_rule=tie_rule)
    (j,) = svc.compare([JudgePair("q", "r1 GARBAGE", "r2 GARBAGE")])
    assert (j.winner, j.unparseable, j.timed_out, j.wins_a, j.wins_b) == (winner, 2, 0, 0, 0)
    assert all(t.verdict is None and t.text for t in j.traces)
    assert svc.stats.unparseable == 2


def test_time_outs_are_counted_and_not_cached(tokenizer):
    svc, judge = service(tokenizer, votes=1, tie_rule="none")
    out = svc.compare([JudgePair("q", "r1 SLOW", "r2 SLOW"), pair(1, 2)])
    assert (out[0].winner, out[0].timed_out, out[0].unparseable) == (None, 1, 0)
    assert out[0].traces[0].text is None and out[1].winner == "b"
    assert svc.stats.timed_out == 1
    svc.compare([JudgePair("q", "r1 SLOW", "r2 SLOW"), pair(1, 2)])
    assert judge.calls == [(2, 1), (1, 1)]  # the timed-out pair is asked again, the other is cached


def test_rrm_mode_needs_the_thinking_block(tokenizer):
    direct_out = FakeJudge(style="direct")
    svc, _ = service(tokenizer, judge=direct_out, mode="rrm", votes=1)
    assert svc.compare([pair(1, 2)])[0].unparseable == 1
    svc, _ = service(tokenizer, judge=FakeJudge(style="direct"), mode="direct", votes=1)
    assert svc.compare([pair(1, 2)])[0].winner == "b"


class ChoiceJudge(FakeJudge):
    """A forced-choice engine: it sees the prompt end inside the box and emits only "1" or "2"."""

    def one(self, prompt: str) -> str | None:
        assert prompt.endswith(CHOICE_PREFIX)
        text = super().one(prompt.removesuffix(CHOICE_PREFIX))
        return None if text is None else text.removeprefix(CHOICE_PREFIX).removesuffix("}")


def test_forced_choice_completes_the_box_and_reserves_its_tokens(tokenizer):
    svc, _ = service(tokenizer, judge=ChoiceJudge(style="direct"), mode="direct", verdict="choice", votes=2)
    (j,) = svc.compare([pair(1, 2)])
    assert j.winner == "b" and j.wins_b == 2 and j.unparseable == 0
    assert {t.verdict for t in j.traces} == {1, 2}  # both orders, one decided verdict each
    # The verdict prefix counts against max_prompt_tokens: a pair that fits exactly without it is cut.
    plain, _ = service(tokenizer, judge=FakeJudge(style="direct"), mode="direct")
    size = plain._render(0, "q", "r1 a b c d e f g h", "r2 i j k l m n o p").num_tokens
    tight, _ = service(
        tokenizer,
        judge=ChoiceJudge(style="direct"),
        mode="direct",
        verdict="choice",
        max_prompt_tokens=size,
        over_length="truncate",
    )
    prompt = tight._render(0, "q", "r1 a b c d e f g h", "r2 i j k l m n o p")
    assert prompt.truncated and prompt.num_tokens <= size and prompt.text.endswith(CHOICE_PREFIX)


def test_forced_choice_needs_direct_mode():
    with pytest.raises(ValueError, match="verdict 'choice' needs mode 'direct'"):
        JudgeSettings(mode="rrm", verdict="choice")


def test_choice_tokens_are_single_tokens(tokenizer):
    ids = choice_token_ids(tokenizer)
    assert len(ids) == 2 and ids[0] != ids[1]
    assert complete_choice(" 2") == "\\boxed{Assistant 2}"


class ProbJudge:
    """A choice-probability engine: P("Assistant 1") = sigmoid(quality(1) - quality(2) + bias), from
    the prompt that ends in the verdict prefix; ``bias`` > 0 is a pull towards the first position.
    SLOW pairs time out (None). ``calls`` records the number of prompts of every call."""

    def __init__(self, bias: float = 0.0) -> None:
        self.bias = bias
        self.calls: list[int] = []
        self.tokenizer = None

    def __call__(self, prompts: list[list[int]]) -> list[float | None]:
        self.calls.append(len(prompts))
        out: list[float | None] = []
        for ids in prompts:
            prompt = self.tokenizer.decode(ids)
            assert prompt.endswith(CHOICE_PREFIX)
            shown = dict(_ANSWER.findall(prompt))
            if "SLOW" in shown["1"] + shown["2"]:
                out.append(None)
                continue
            margin = FakeJudge.quality(shown["1"]) - FakeJudge.quality(shown["2"]) + self.bias
            out.append(1.0 / (1.0 + math.exp(-margin)))
        return out


def prob_service(tokenizer, judge: ProbJudge | None = None, **settings) -> tuple[JudgeService, ProbJudge]:
    judge = judge or ProbJudge()
    judge.tokenizer = tokenizer
    settings = JudgeSettings(mode="direct", verdict="choice_prob", prompt_style="mtbench", **settings)
    return JudgeService(FakeJudge(), tokenizer, settings, choice_probs=judge), judge


def test_choice_prob_scores_both_orders_in_one_call(tokenizer):
    svc, judge = prob_service(tokenizer)
    out = svc.compare([pair(3, 1), pair(1, 4), pair(5, 9, q="Another question?")])
    assert [j.winner for j in out] == ["a", "b", "b"] and judge.calls == [6]  # one forward per order
    assert svc.generate.calls == []  # type: ignore[attr-defined]  (nothing sampled)
    for j, margin in zip(out, (2, -3, -4), strict=True):
        assert j.prob_a == pytest.approx(1 / (1 + math.exp(-margin))) and j.decided
        assert (j.votes, j.wins_a + j.wins_b, j.unparseable, j.timed_out) == (2, 1, 0, 0)
        assert {t.order for t in j.traces} == {"ab", "ba"} and {t.winner for t in j.traces} == {j.winner}
    assert (svc.stats.judge_calls, svc.stats.waves) == (6, 1)


def test_choice_prob_cancels_a_position_bias(tokenizer):
    # A pull of 3 logits towards Assistant 1 outweighs a quality gap of 1 in each order alone, so
    # both orders name Assistant 1; the mean over both orders still prefers the better response.
    svc, _ = prob_service(tokenizer, ProbJudge(bias=3.0), tie_rule="none")
    better, tied = svc.compare([pair(1, 2), JudgePair("q", "r4 x", "r4 y")])
    assert {t.verdict for t in better.traces} == {1}
    assert better.winner == "b" and better.prob_a is not None and better.prob_a < 0.5
    # Equal quality, only the bias: mean P(a) is exactly 0.5, a tie for the tie rule.
    assert tied.prob_a == pytest.approx(0.5) and not tied.decided


def test_choice_prob_cache_keeps_the_probability(tokenizer):
    svc, judge = prob_service(tokenizer)
    (first,) = svc.compare([pair(1, 3)])
    again, flipped = svc.compare([pair(1, 3), JudgePair("Which is better?", "r3 answer", "r1 answer")])
    assert judge.calls == [2] and again.from_cache and flipped.from_cache
    assert again.prob_a == first.prob_a and again.traces == first.traces
    assert flipped.prob_a == pytest.approx(1 - first.prob_a) and flipped.winner == "a"


def test_choice_prob_time_outs_leave_the_pair_to_the_tie_rule(tokenizer):
    svc, judge = prob_service(tokenizer, tie_rule="none")
    slow, fine = svc.compare([JudgePair("q", "r1 SLOW", "r2 SLOW"), pair(2, 1)])
    assert (slow.winner, slow.prob_a, slow.timed_out, slow.decided) == (None, None, 2, False)
    assert fine.winner == "a" and svc.stats.timed_out == 2
    svc.compare([JudgePair("q", "r1 SLOW", "r2 SLOW")])
    assert judge.calls == [4, 2]  # the timed-out pair was not cached


def test_choice_prob_takes_no_votes(tokenizer):
    svc, _ = prob_service(tokenizer)
    with pytest.raises(ValueError, match="votes must be 1, got 3"):
        svc.compare([pair(1, 2)], votes=3)
    with pytest.raises(ValueError, match="votes must be 1"):
        JudgeSettings(mode="direct", verdict="choice_prob", votes=2)
    with pytest.raises(ValueError, match="verdict 'choice_prob' needs mode 'direct'"):
        JudgeSettings(mode="rrm", verdict="choice_prob")
    with pytest.raises(ValueError, match="needs a choice_probs engine callable"):
        JudgeService(FakeJudge(), tokenizer, JudgeSettings(mode="direct", verdict="choice_prob"))


def test_rank_counts_prompts_and_rates_leave_out_empty_denominators(tokenizer):
    svc, _ = service(tokenizer, votes=1)
    svc.rank([("q1", responses([1, 2, 3], "a")), ("q2", responses([2, 1], "b"))])
    assert svc.stats.prompts_judged == 2 and svc.stats.rank_seconds >= 0
    totals = {"prefill_tokens": 400, "prefix_cached_tokens": 100, "generated_tokens": 30}
    assert judge_rates(totals) == {**totals, "prefix_cache_hit_rate": 0.25}
    rates = judge_rates({**totals, "prompts_judged": 3, "rank_seconds": 6.0})
    assert (rates["tokens_per_prompt"], rates["seconds_per_prompt"]) == (10.0, 2.0)
    assert judge_rates({"prefill_tokens": 0}) == {"prefill_tokens": 0}


def test_over_long_pairs_are_truncated_skipped_or_fail_and_always_counted(tokenizer):
    long = "r9 " + " ".join(f"word{i}" for i in range(400))
    svc, judge = service(tokenizer, max_prompt_tokens=1500, over_length="truncate")
    (j,) = svc.compare([JudgePair("q", long, "r1 short")])
    assert j.truncated and j.winner == "a"
    assert (svc.stats.over_length_pairs, svc.stats.truncated, svc.stats.skipped) == (1, 1, 0)
    svc, judge = service(tokenizer, max_prompt_tokens=1500, over_length="skip", tie_rule="first")
    out = svc.compare([JudgePair("q", long, "r1 short"), pair(1, 2)])
    assert out[0].winner is None and "max_prompt_tokens" in out[0].error and out[1].winner == "b"
    assert judge.calls == [(1, 1)]
    assert (svc.stats.over_length_pairs, svc.stats.truncated, svc.stats.skipped) == (1, 0, 1)
    svc, judge = service(tokenizer, max_prompt_tokens=1500, over_length="error")
    with pytest.raises(PromptTooLongError, match=r"pair 1 \(query 'Long one\?'\).*judge.over_length=error"):
        svc.compare([pair(1, 2), JudgePair("Long one?", long, "r1 short")])
    assert judge.calls == []  # nothing judged: the call failed before its first wave


def test_stats_reset(tokenizer):
    svc, _ = service(tokenizer)
    svc.compare([pair(1, 2)])
    old = svc.reset_stats()
    assert old.comparisons == 1 and svc.stats.comparisons == 0 and svc.stats.judge_calls == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (JudgePair("q", 3, "x"), "pair 0: field 'response_a': expected a string, got int"),  # type: ignore[arg-type]
        ({"query": "q", "response_a": "x"}, "pair 0: missing field 'response_b'"),
    ],
)
def test_bad_pairs_name_index_and_field(tokenizer, bad, match):
    svc, _ = service(tokenizer)
    with pytest.raises(JudgeInputError, match=match):
        svc.compare([bad])


def test_generate_must_answer_every_prompt(tokenizer):
    svc = JudgeService(lambda prompts, n: [], tokenizer, JudgeSettings())
    with pytest.raises(ValueError, match="returned 0 results for 1 prompts"):
        svc.compare([pair(1, 2)])


# ---- rank / best_of_n -----------------------------------------------------------------------------
def responses(qualities: list[int], tag: str) -> list[str]:
    return [f"r{q} {tag} response {i}" for i, q in enumerate(qualities)]


def test_knockout_over_many_queries_one_batch_per_round(tokenizer):
    svc, judge = service(tokenizer, votes=1, method="knockout")
    items = [
        ("q8", responses([3, 9, 1, 7, 5, 2, 8, 4], "a")),
        ("q5", responses([2, 6, 4, 1, 3], "b")),
        ("q2", responses([1, 2], "c")),
        ("q1", responses([4], "d")),
    ]
    results = svc.rank(items)
    assert [r.winner for r in results] == [1, 1, 1, 0]
    assert len(judge.calls) == 3  # ceil(log2 8) rounds; every query's matches share each wave
    assert judge.calls[0][0] == 4 + 2 + 1
    for (_, resp), r in zip(items, results, strict=True):
        n = len(resp)
        assert len(r.comparisons) == n - 1 and sorted(r.ranking) == list(range(n))
        assert r.ranking[0] == r.winner and r.rewards[r.winner] == 1.0 and r.bracket is not None
    assert results[3].rewards == [1.0] and results[3].comparisons == []
    assert {"round", "a", "b", "order", "text", "verdict"} <= set(results[0].traces[0])


@pytest.mark.parametrize("rating", ["bradley_terry", "elo"])
def test_round_robin_recovers_the_hidden_order(tokenizer, rating):
    svc, judge = service(tokenizer, votes=1, method="elo", rating=rating)
    quality = [4, 9, 1, 6, 2]
    (r,) = svc.rank([("q", responses(quality, "x"))])
    assert r.ranking == sorted(range(5), key=lambda i: -quality[i])
    assert judge.calls == [(10, 1)] and r.ratings is not None and r.bracket is None
    assert math.isclose(sum(r.rewards), 0.0, abs_tol=1e-9)


@pytest.mark.parametrize("method", ["knockout", "elo"])
def test_best_of_n_small_groups(tokenizer, method):
    svc, judge = service(tokenizer, votes=2)
    results = svc.rank([("one", ["r1 only"]), ("two", ["r1 worse", "r5 better"])], method=method)
    picks = [r.winner for r in results]  # best-of-n's pick: the tournament's winner
    assert picks == [0, 1]
    assert judge.calls == [(2, 1)]


def test_rank_rejects_empty_groups(tokenizer):
    svc, _ = service(tokenizer)
    with pytest.raises(JudgeInputError, match="item 1: expected a non-empty list of responses"):
        svc.rank([("q", ["a", "b"]), ("q2", [])])
    with pytest.raises(ValueError, match="method must be one of"):
        svc.rank([("q", ["a"])], method="glicko")


def test_settings_from_config_and_validation():
    from rrm_ray.config import JudgeConfig

    s = JudgeSettings.from_config(JudgeConfig(votes=3, mode="direct"), seed=7, cache_key="m|t=0.6")
    assert (s.votes, s.mode, s.seed, s.cache_key, s.max_prompt_tokens) == (3, "direct", 7, "m|t=0.6", 4096)
    # prompt_style auto: the release's prompt for an RRM, the MT-Bench layout for a DirectJudge
    assert (s.prompt_style, s.verdict_rule, s.presentation, s.over_length) == (
        "mtbench",
        "release",
        "both_orders",
        "error",
    )
    assert JudgeSettings.from_config(JudgeConfig(), seed=0).prompt_style == "rrm_release"
    with pytest.raises(ValueError, match="prompt_style 'rrm_release' needs mode 'rrm'"):
        JudgeSettings(mode="direct", prompt_style="rrm_release")
    with pytest.raises(ValueError, match="tie_rule must be one of"):
        JudgeSettings(tie_rule="coin")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "wins_a, wins_b, good_is_a, expected",
    [(1, 0, True, 1.0), (1, 0, False, 0.0), (0, 2, False, 1.0), (0, 0, True, 0.5), (2, 2, False, 0.5)],
)
def test_eval_credit_follows_the_votes_not_the_tie_rule(wins_a, wins_b, good_is_a, expected):
    from rrm_ray.judge.evaluation import credit
    from rrm_ray.judge.records import PairJudgment

    judgment = PairJudgment("a", wins_a, wins_b, wins_a + wins_b, 0, 0, 0)  # "a" may be a tie-rule coin
    assert credit(judgment, good_is_a) == expected


def test_swiss_rounds_over_many_queries(tokenizer):
    # judge.method=swiss: ceil(log2 n) waves of floor(n/2) comparisons, every query in each wave;
    # judge.swiss_rounds is capped per group at a full round robin (n=2: one round).
    svc, judge = service(tokenizer, votes=1, method="swiss", swiss_rounds=3)
    quality = [3, 9, 1, 7, 5, 2, 8, 4]
    results = svc.rank([("q8", responses(quality, "s")), ("q2", responses([1, 2], "t"))])
    assert [c[0] for c in judge.calls] == [4 + 1, 4, 4]
    r = results[0]
    assert r.method == "swiss" and r.winner == 1 and len(r.comparisons) == 12
    assert r.bracket is not None and r.ratings is not None and len(r.bracket) == 3
    assert math.isclose(sum(r.rewards), 0.0, abs_tol=1e-9) and r.rewards[1] == max(r.rewards)
    assert results[1].ranking == [1, 0] and len(results[1].comparisons) == 1
    with pytest.raises(ValueError, match="swiss_rounds must be None or an int >= 1"):
        JudgeSettings(swiss_rounds=0)


def test_a_keyed_item_gets_the_same_tournament_in_any_call(tokenizer):
    """The streaming judge ranks a prompt in whichever call its group lands: its tournament is seeded by
    its key (the prompt's index), so the bracket is the one the whole-batch call gives it."""
    svc, _ = service(tokenizer, votes=1, method="knockout")
    item = ("q8", responses([3, 9, 1, 7, 5, 2, 8, 4], "k"))
    other = ("q5", responses([2, 6, 4, 1, 3], "o"))
    (alone,) = svc.rank([item], keys=[7])
    svc.cache.clear()
    together = svc.rank([other, item], keys=[3, 7])[1]

    def matches(result):
        return [(m.round, m.a, m.b) for m in result.comparisons]

    assert matches(alone) == matches(together)
    assert alone.ranking == together.ranking
    with pytest.raises(JudgeInputError, match="1 keys for 2 items"):
        svc.rank([item, other], keys=[0])


def test_the_shown_order_is_a_coin_per_pair_not_a_ranking_of_responses(tokenizer):
    """With one vote a position-biased judge favours whichever response is shown first: that must be
    a pseudo-random side per pair, not the same response in every match of its group."""
    from rrm_ray.judge.records import shown_flipped

    group = responses([1, 2, 3, 4, 5, 6, 7, 8], "g")
    first_in = dict.fromkeys(group, 0)
    for i, a in enumerate(group):
        for b in group[i + 1 :]:
            assert shown_flipped(a, b) != shown_flipped(b, a)  # one orientation per unordered pair
            first_in[b if shown_flipped(a, b) else a] += 1
    # a total order (e.g. "smaller digest first") would show one response first in all 7 of its
    # matches, the next in 6, ... down to 0
    assert sorted(first_in.values()) != list(range(8))
    # "first" tie rule: an undecided pair goes to the caller's first response, whichever was shown
    svc, _ = service(tokenizer, votes=2, tie_rule="first")
    for a, b in [("r1 GARBAGE", "r2 GARBAGE"), ("r2 GARBAGE", "r1 GARBAGE")]:
        assert svc.compare([JudgePair("q", a, b)])[0].winner == "a"


def _first_shown(prompt: str) -> str:
    return dict(_ANSWER.findall(prompt))["1"]


def test_the_seed_draws_the_shown_order_and_one_vote_is_one_presentation(tokenizer):
    """The release's protocol (one presentation per item from a seeded coin, one sample): the same
    seed shows every pair in the same order, another seed in other orders; the caller's order of the
    two responses changes nothing; `shown_first` (what `rrm-ray judge --render-only` prints) agrees."""
    from rrm_ray.judge.service import shown_first

    pairs = [pair(i, i + 10, q=f"q{i}?") for i in range(16)]

    def shown(seed: int, flip_caller: bool = False) -> list[str]:
        listed = [JudgePair(p.query, p.response_b, p.response_a) if flip_caller else p for p in pairs]
        svc, judge = service(tokenizer, votes=1, seed=seed)
        out = svc.compare(listed)
        assert all(len(j.traces) == 1 for j in out) and len(judge.prompts) == len(pairs)
        firsts = [_first_shown(p) for p in judge.prompts]
        expected = [
            (p.response_a if side == "a" else p.response_b)
            for p in listed
            for side in shown_first(p, svc.settings)
        ]
        assert firsts == expected
        return firsts

    assert shown(1) == shown(1) == shown(1, flip_caller=True)
    assert shown(1) != shown(2)  # another seed, other presentations (16 coins: fixed by sha256)


def test_seeded_coin_shows_every_vote_in_the_coins_order(tokenizer):
    # A fully position-biased judge: with both_orders its votes split; with seeded_coin all three votes
    # see the same order, so the side the coin shows first wins 3-0.
    biased = JudgePair("q", "r1 FIRST a", "r2 FIRST b")
    svc, judge = service(tokenizer, votes=3, adaptive_votes=False, presentation="seeded_coin")
    (j,) = svc.compare([biased])
    assert len({t.order for t in j.traces}) == 1 and sorted((j.wins_a, j.wins_b)) == [0, 3]
    assert judge.calls == [(1, 3)]  # one prompt, three samples
    svc, _ = service(tokenizer, votes=3, adaptive_votes=False, presentation="both_orders")
    (j,) = svc.compare([biased])
    assert {t.order for t in j.traces} == {"ab", "ba"} and sorted((j.wins_a, j.wins_b)) == [1, 2]
