"""Rewards per sample: the rule actor's scores, and the RRM judge's tournaments where it judges.

    rule   = reward actor .score(texts, answers)              sent first, it scores while the judge ranks
    judged = judge.rank(each judged prompt's n samples)       knockout / ELO, one batched call per step
    reward = sample_rewards(rule, judged, mix)                rrm_ray.judge.feedback

The judge's counters are read right after its batch is judged, so they describe that batch even when
the next batch's judging runs before the step that trains on it is logged (`rrm_ray.pipeline`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray
import torch

from actors.reward import RewardWorker
from rrm_ray.clients.group import ActorGroup
from rrm_ray.clients.judge import JudgeClient
from rrm_ray.clients.judge_endpoint import EndpointJudgeClient
from rrm_ray.clients.restarts import Restarts
from rrm_ray.config import JobConfig
from rrm_ray.data.prompts import PromptRow
from rrm_ray.judge.feedback import Agreement, prompts_to_judge, query_text, sample_rewards, verifier_agreement
from rrm_ray.rewards.rules import with_verdict_rule
from rrm_ray.types import Completion, ScoredBatch, StepRewards

if TYPE_CHECKING:
    from rrm_ray.clients.roles import Placement


class RewardClient:
    """The reward-rule actor, with the judge when `judge.enabled`; `agreement` accumulates the judge's
    agreement with the verifier over the run."""

    def __init__(
        self,
        group: ActorGroup,
        cfg: JobConfig,
        restarts: Restarts,
        judge: JudgeClient | EndpointJudgeClient | None,
    ) -> None:
        self.group, self.cfg, self.restarts, self.judge = group, cfg, restarts, judge
        self.agreement = Agreement()

    @classmethod
    def start(
        cls,
        cfg: JobConfig,
        place: Placement,
        restarts: Restarts,
        judge: JudgeClient | EndpointJudgeClient | None,
    ) -> RewardClient:
        c, r = cfg.cluster, cfg.reward
        # a judge-training rule reads verdicts by judge.verdict_rule, as evaluation does
        rule = with_verdict_rule(r.rule, cfg.judge.verdict_rule)
        group = place(
            "reward",
            RewardWorker,
            init_args=(
                dict(r.rule_weights) or rule,
                r.timeout_s,
                r.fallback,
                r.num_workers,
                r.accuracy_rule or next(iter(r.rule_weights), rule),
            ),
            env=dict(c.env),
            max_restarts=c.max_actor_restarts,
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
        )
        return cls(group, cfg, restarts, judge)

    # -- the rule ------------------------------------------------------------------------------------------
    def score(
        self, completions: list[Completion], rows: list[PromptRow], in_flight: ray.ObjectRef | None = None
    ) -> ScoredBatch:
        """Rule rewards; `in_flight` is this batch's `score_async` ref when it was sent already. A reward
        actor that died is restarted and asked again: rule scoring is pure, so the retry scores the same."""

        def once(attempt: int) -> ScoredBatch:
            ref = in_flight if attempt == 0 and in_flight is not None else self.score_async(completions, rows)
            return self.group.get([ref], "score")[0]

        return self.restarts.retry(self.group, once)

    def score_async(self, completions: list[Completion], rows: list[PromptRow]) -> ray.ObjectRef:
        answers = [rows[c.prompt_index].answer for c in completions]
        return self.group.actors[0].score.remote([c.text for c in completions], answers)

    # -- a training batch: rule and judge --------------------------------------------------------------------
    def score_step(
        self, rows: list[PromptRow], completions: list[Completion], n: int, step: int
    ) -> StepRewards:
        """Every sample's reward for the batch of training step `step` (0-based; names its tables)."""
        rule_ref = self.score_async(completions, rows)  # the rule actor scores while the judge ranks
        judged = self.judge_rewards(rows, completions, n) if self.judge else {}
        scored = self.score(completions, rows, in_flight=rule_ref)
        return self.combine(scored, judged, n, step)

    def combine(self, scored: ScoredBatch, judged: dict[int, Any], n: int, step: int) -> StepRewards:
        """The rule's scores and the judge's rankings (by prompt index) as per-sample rewards."""
        j = self.cfg.judge
        rewards = torch.tensor(
            sample_rewards(
                scored.rewards,
                {p: r.rewards for p, r in judged.items()},
                n,
                j.reward_mix if self.judge else "weighted",
                j.rule_weight if self.judge else 1.0,
                j.judge_weight,
            ),
            dtype=torch.float32,
        )
        out = StepRewards(rewards, scored, judged)
        if judged:
            self._judge_metrics(out, n, step + 1)
        return out

    def judged_prompts(self, rows: list[PromptRow]) -> list[int]:
        """The prompts whose groups the judge ranks (all, or those without a reference answer)."""
        return prompts_to_judge([r.answer for r in rows], self.cfg.judge.reward_mix) if self.judge else []

    @staticmethod
    def judge_item(row: PromptRow, group: list[Completion]) -> tuple[str, list[str]]:
        """What the judge ranks for one prompt: its query and its n responses."""
        return query_text(row.prompt), [c.text for c in group]

    def judge_rewards(self, rows: list[PromptRow], completions: list[Completion], n: int) -> dict[int, Any]:
        """Rank each judged prompt's samples with the RRM (one batched call for the whole step); each
        tournament seeded by its prompt's index, as the streaming judge seeds it."""
        assert self.judge is not None
        judged = self.judged_prompts(rows)
        items = [self.judge_item(rows[p], completions[p * n : (p + 1) * n]) for p in judged]
        results = self.judge.rank(items, keys=judged) if items else []
        return dict(zip(judged, results, strict=True))

    def _judge_metrics(self, out: StepRewards, n: int, logged_step: int) -> None:
        """Judge counters (read and reset right after this batch's judging), agreement with the verifier,
        and sampled traces/brackets as tables named by the step that logs them."""
        assert self.judge is not None
        metrics = {f"judge/{k}": float(v) for k, v in self.judge.stats(reset=True).items()}
        rule_rewards = out.rule.rewards
        verifiable = {p: r for p, r in out.judged.items() if rule_rewards[p * n] is not None}
        agreement = verifier_agreement(
            {p: [(m.a, m.b, m.outcome) for m in r.comparisons] for p, r in verifiable.items()},
            {p: r.winner for p, r in verifiable.items()},
            [0.0 if r is None else r for r in rule_rewards],
            n,
        )
        self.agreement.add(agreement)
        for name, value in (
            ("judge/verifier_pair_agreement", agreement.pair_rate),
            ("judge/verifier_pick_agreement", agreement.pick_rate),
        ):
            if value is not None:
                metrics[name] = value
        limit, traces, brackets = self.cfg.trainer.log_samples, [], []
        for p, result in list(out.judged.items())[: max(1, limit)]:
            traces += [
                {"step": logged_step, "prompt": p, **{k: str(v)[:2000] for k, v in t.items()}}
                for t in result.traces[:limit]
            ]
            brackets.append(
                {
                    "step": logged_step,
                    "prompt": p,
                    "method": result.method,
                    "winner": result.winner,
                    "ranking": str(result.ranking),
                    "rewards": str([round(x, 3) for x in result.rewards]),
                    "bracket": str(result.bracket or result.ratings),
                }
            )
        out.judge_metrics = metrics
        out.tables = {
            f"judge_traces_step{logged_step:05d}": traces,
            f"judge_brackets_step{logged_step:05d}": brackets,
        }
