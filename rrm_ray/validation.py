"""Up-front validation of a job's config: values against each other and against the declared cluster.

`load_config` is what every command calls: the schema merge (`rrm_ray.config.merge_config`: unknown
keys and wrong types fail there) and then `validate`, so a bad job fails before Ray is touched, with a
message that names the key and says what is allowed. Checks that need the placement layout, the reward
rules or the downstream task settings live here, above those modules, so the schema imports none of them.
One module on purpose, although long: many checks relate keys of different sections (the judge's
timeouts to the cluster's, the learner's ranks to the rollout's samples), and a user looking for why a
key was refused finds every rule about it here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rrm_ray.config import (
    REPLACED_VALUES,
    ConfigError,
    JobConfig,
    JudgeConfig,
    RewardConfig,
    merge_config,
    one_of,
    require,
    resolved_dtype,
)
from rrm_ray.data.downstream import validate_settings
from rrm_ray.judge.prompts import CONFIG_PROMPT_STYLES, OVER_LENGTH
from rrm_ray.judge.records import PRESENTATIONS
from rrm_ray.judge.verdict import VERDICT_RULES
from rrm_ray.lora import VLLM_MAX_LORA_RANKS
from rrm_ray.placement import COLOCATABLE, gpus_asked, local_resources, own_spec, placement_layout
from rrm_ray.rewards.rules import resolve_rule
from rrm_ray.seeds import SEED_REQUESTS
from rrm_ray.weight_sync import weight_sync_method


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Schema defaults, a YAML file and `key=value` overrides, merged and validated.

    Returns a typed `JobConfig` object (a dataclass instance), so later code cannot grow keys.
    """
    cfg = merge_config(path, overrides)
    validate(cfg)
    return cfg


# -- every numeric knob -----------------------------------------------------------------------------------
# Every int or float in the config (typed fields, and values of numeric maps such as reward.rule_weights)
# must be finite and, unless listed here, >= 0: a knob added to the schema is covered without a line
# here. Intervals in the usual notation; `inf` as an upper end means "finite, no bound".
RANGES: dict[str, str] = {
    "cluster.local_num_cpus": "[1, inf)",
    "cluster.placement_timeout_s": "(0, inf)",
    "cluster.call_timeout_s": "(0, inf)",
    "cluster.gpu_memory_gib": "(0, inf)",
    "model.max_model_len": "[1, inf)",
    "rollout.num_engines": "[1, inf)",
    "rollout.cpus_per_engine": "(0, inf)",
    "rollout.tensor_parallel_size": "[1, inf)",
    "rollout.n_samples": "[1, inf)",
    "rollout.temperature": "(0, inf)",
    "rollout.top_p": "(0, 1]",
    "rollout.max_new_tokens": "[1, inf)",
    "rollout.eval_max_new_tokens": "[1, inf)",
    "rollout.kv_cache_gib": "(0, inf)",
    "rollout.gpu_memory_utilization": "(0, 1]",
    "rollout.threads": "[1, inf)",
    "rollout.weight_bucket_mb": "[1, inf)",
    "rollout.max_num_batched_tokens": "[1, inf)",
    "learner.num_ranks": "[1, inf)",
    "learner.cpus_per_rank": "(0, inf)",
    "learner.threads": "[1, inf)",
    "learner.micro_batch_size": "[1, inf)",
    "learner.lr": "(0, inf)",
    "learner.min_lr_ratio": "[0, 1]",
    "learner.adam_beta1": "[0, 1)",
    "learner.adam_beta2": "[0, 1)",
    "learner.logprob_chunk": "[1, inf)",
    "algorithm.clip_low": "[0, 1)",
    "algorithm.mini_batches": "[1, inf)",
    "reward.rule_weights.*": "(-inf, inf)",
    "reward.timeout_s": "(0, inf)",
    "reward.fallback": "(-inf, inf)",
    "reward.num_workers": "[1, inf)",
    "reward.cpus": "(0, inf)",
    "judge.num_engines": "[1, inf)",
    "judge.cpus_per_engine": "(0, inf)",
    "judge.tensor_parallel_size": "[1, inf)",
    "judge.top_p": "(0, 1]",
    "judge.max_new_tokens": "[1, inf)",
    "judge.max_model_len": "[1, inf)",
    "judge.max_prompt_tokens": "[1, inf)",
    "judge.votes": "[1, inf)",
    "judge.k_factor": "(0, inf)",
    "judge.batch_timeout_s": "(0, inf)",
    "judge.kv_cache_gib": "(0, inf)",
    "judge.gpu_memory_utilization": "(0, 1]",
    "judge.threads": "[1, inf)",
    "dpo.beta": "(0, inf)",
    "dpo.label_smoothing": "[0, 0.5)",
    "dpo.epochs": "[1, inf)",
    "dpo.pairs_per_step": "[1, inf)",
    "dpo.max_prompts": "[1, inf)",
    "data.prompts_per_step": "[1, inf)",
    "data.arithmetic_max_operand": "[1, inf)",
    "trainer.total_steps": "[1, inf)",
    "trainer.time_limit_min": "(0, inf)",
    "trainer.stop_grace_s": "(0, inf)",
    "trainer.downstream_eval.batch_size": "[1, inf)",
    "tracking.http_timeout_s": "(0, inf)",
    "tracking.system_metrics_interval_s": "(0, inf)",
    "tracking.buffer_max_mb": "(0, inf)",
    "checkpoint.keep_last": "[1, inf)",
}
DEFAULT_RANGE = "[0, inf)"


def parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """ "(0, 1]" -> (0.0, 1.0, low open, high closed)."""
    low, high = (part.strip() for part in text[1:-1].split(","))
    return float(low), float(high), text[0] == "(", text[-1] == ")"


def describe_interval(text: str) -> str:
    """ "[1, inf)" -> "at least 1", "[0, inf)" -> ">= 0", "(0, inf)" -> "> 0", "(0, 1]" -> "in (0, 1]"."""
    low, high, low_open, _ = parse_interval(text)
    if math.isinf(high) and math.isinf(low):
        return "a finite number"
    if math.isinf(high):
        return f"> {low:g}" if low_open else (">= 0" if low == 0 else f"at least {low:g}")
    return f"in {text}"


def _numeric_type(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    return bool(args) and all(a in (int, float) for a in args)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def numeric_keys(schema: type = JobConfig, prefix: str = "") -> Iterator[str]:
    """Every numeric knob of the schema, dotted; a map of numbers as `key.*` (for tests and docs)."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_keys(hint, f"{key}.")
        elif typing.get_origin(hint) is dict and _numeric_type(typing.get_args(hint)[1]):
            yield f"{key}.*"
        elif _numeric_type(hint):
            yield key


def numeric_values(node: Any, prefix: str = "") -> Iterator[tuple[str, str, float]]:
    """(key, its RANGES entry's key, value) for every number set in a config (dataclass) tree."""
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from numeric_values(value, f"{key}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    yield f"{key}.{k}", f"{key}.*", v
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield key, key, value


def validate_numbers(cfg: JobConfig, finite_only: bool = False) -> None:
    """Every number finite and in its range (RANGES, else >= 0): `inf` passes a `> 0` check, crashes
    later (ray.wait, the reward runner, the LR schedule), and NaN passes no comparison at all.
    `validate` checks finiteness first and the ranges last, so the checks in between (with messages
    about how keys relate) see finite numbers and speak first."""
    for key, entry, value in numeric_values(cfg):
        interval = RANGES.get(entry, DEFAULT_RANGE)
        low, high, low_open, high_open = parse_interval(interval)
        what = describe_interval(interval)
        require(math.isfinite(value), key, f"must be a finite number ({what}), got {value}")
        if finite_only:
            continue
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        require(ok, key, f"must be {what}, got {value}")


def validate_timeouts(cfg: JobConfig) -> None:
    """A remote call must outlive the work inside it: one judge engine batch, and the reward rule's
    worst case for the biggest batch it scores in one call (every item timing out, one after another
    on each worker; the accuracy rule, when it differs, scores the batch again)."""
    c, r, j, d = cfg.cluster, cfg.reward, cfg.judge, cfg.data
    if j.enabled:
        require(
            c.call_timeout_s > j.batch_timeout_s,
            "cluster.call_timeout_s",
            f"a judge call waits for at least one engine batch, so it must outlive judge.batch_timeout_s="
            f"{j.batch_timeout_s:g}; got {c.call_timeout_s:g} (raise it, or lower judge.batch_timeout_s)",
        )
    items = max(d.prompts_per_step * cfg.rollout.n_samples, d.eval_max_prompts)
    passes = 1 if (r.accuracy_rule is None or r.accuracy_rule == r.rule) and not r.rule_weights else 2
    worst = math.ceil(items / r.num_workers) * r.timeout_s * passes
    require(
        c.call_timeout_s > worst,
        "cluster.call_timeout_s",
        f"a reward call scores up to {items} items (data.prompts_per_step x rollout.n_samples, or "
        f"data.eval_max_prompts) over reward.num_workers={r.num_workers}, each allowed reward.timeout_s="
        f"{r.timeout_s:g}{' twice (reward and accuracy rule)' if passes == 2 else ''}: up to {worst:g}s, "
        f"which cluster.call_timeout_s={c.call_timeout_s:g} must outlive",
    )


def validate_tracking(cfg: JobConfig) -> None:
    """The `tracking` section (called by `validate`)."""
    t = cfg.tracking
    one_of(t.log_model, "tracking.log_model", ("none", "path", "artifacts"))
    require(
        t.system_metrics_interval_s > 0,
        "tracking.system_metrics_interval_s",
        f"must be > 0 seconds, got {t.system_metrics_interval_s}",
    )
    require(t.run_name is None or t.run_name.strip() != "", "tracking.run_name", "must be null or non-empty")
    if t.registered_model is not None:
        require(t.registered_model.strip() != "", "tracking.registered_model", "must be null or a name")
        require(
            t.log_model != "none" and cfg.checkpoint.save_final,
            "tracking.registered_model",
            "registers the final policy, so it needs tracking.log_model=path or artifacts and "
            f"checkpoint.save_final=true (got {t.log_model} and {cfg.checkpoint.save_final})",
        )


def validate(cfg: JobConfig) -> None:
    """Check values against each other and the declared cluster; raise ConfigError naming the key."""
    c, r, lr, a, d = cfg.cluster, cfg.rollout, cfg.learner, cfg.algorithm, cfg.data
    validate_numbers(cfg, finite_only=True)
    one_of(c.device, "cluster.device", ("cpu", "cuda"))
    one_of(cfg.model.dtype, "model.dtype", ("auto", "float32", "bfloat16", "float16"))
    one_of(lr.backend, "learner.backend", ("fsdp2", "deepspeed"))
    one_of(lr.lr_schedule, "learner.lr_schedule", ("constant", "cosine", "linear"))
    one_of(lr.zero_stage, "learner.zero_stage", (2, 3))
    require(
        not lr.offload_params or lr.zero_stage == 3, "learner.offload_params", "needs learner.zero_stage=3"
    )
    require(
        c.device == "cuda" or not (lr.offload_params or lr.offload_optimizer),
        "learner.offload_optimizer",
        "offloading only applies with cluster.device=cuda (on cpu everything is in CPU memory already)",
    )
    one_of(a.name, "algorithm.name", ("grpo",))
    for key, strategy in (("rollout.strategy", r.strategy), ("learner.strategy", lr.strategy)):
        one_of(strategy, key, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    one_of(r.seed_requests, "rollout.seed_requests", SEED_REQUESTS)
    for key, value in (
        ("rollout.num_engines", r.num_engines),
        ("rollout.n_samples", r.n_samples),
        ("rollout.max_new_tokens", r.max_new_tokens),
        ("rollout.weight_bucket_mb", r.weight_bucket_mb),
        ("learner.num_ranks", lr.num_ranks),
        ("learner.micro_batch_size", lr.micro_batch_size),
        ("data.prompts_per_step", d.prompts_per_step),
        ("trainer.total_steps", cfg.trainer.total_steps),
        ("algorithm.mini_batches", a.mini_batches),
        ("model.max_model_len", cfg.model.max_model_len),
    ):
        require(value >= 1, key, f"must be at least 1, got {value}")
    require(lr.lr > 0, "learner.lr", f"must be positive, got {lr.lr}")
    require(0 <= a.clip_low < 1, "algorithm.clip_low", f"must be in [0, 1), got {a.clip_low}")
    require(a.clip_high >= 0, "algorithm.clip_high", f"must be >= 0, got {a.clip_high}")
    require(a.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {a.kl_coef}")
    require(a.tis_cap is None or a.tis_cap >= 1, "algorithm.tis_cap", "must be null or >= 1")
    require(r.temperature > 0, "rollout.temperature", "must be > 0 (use eval for greedy decoding)")
    require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    validate_learner_numerics(cfg)
    validate_lora(cfg)
    require(cfg.reward.timeout_s > 0, "reward.timeout_s", "must be > 0")
    require(c.placement_timeout_s > 0, "cluster.placement_timeout_s", "must be > 0")
    require(c.call_timeout_s > 0, "cluster.call_timeout_s", "must be > 0")
    require(  # Ray reads -1 as "restart forever"; the driver counts restarts against this budget
        c.max_actor_restarts >= 0, "cluster.max_actor_restarts", f"must be >= 0, got {c.max_actor_restarts}"
    )
    require(r.n_samples >= 2, "rollout.n_samples", "GRPO needs at least 2 samples per prompt")
    require(
        cfg.trainer.time_limit_min is None or cfg.trainer.time_limit_min > 0,
        "trainer.time_limit_min",
        f"must be null or > 0 minutes, got {cfg.trainer.time_limit_min}",
    )
    validate_staleness(cfg)
    validate_streaming(cfg)
    require(
        not (d.format == "preference" and d.order_balanced) or r.n_samples % 2 == 0,
        "rollout.n_samples",
        f"data.order_balanced shows each pair in both orders, half the group each: n_samples must be even, "
        f"got {r.n_samples} (or set data.order_balanced=false)",
    )
    validate_judge(cfg.judge)
    validate_judge_in_job(cfg)
    validate_tracking(cfg)
    validate_settings(cfg.trainer.downstream_eval)
    require(
        not cfg.trainer.downstream_eval.enabled or cfg.checkpoint.save_final,
        "trainer.downstream_eval.enabled",
        "evaluates the final policy from its HF directory, which needs checkpoint.save_final=true",
    )
    require(cfg.dpo.beta > 0, "dpo.beta", f"must be > 0, got {cfg.dpo.beta}")
    require(0 <= cfg.dpo.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
    one_of(d.format, "data.format", ("prompts", "preference"))
    one_of(d.preference_format, "data.preference_format", ("generic", "skywork", "tulu", "hh_rlhf"))
    one_of(d.on_error, "data.on_error", ("raise", "skip"))
    one_of(d.synthetic_difficulty, "data.synthetic_difficulty", ("trivial", "easy", "medium", "hard"))
    require(d.synthetic_pairs >= 0, "data.synthetic_pairs", f"must be >= 0, got {d.synthetic_pairs}")
    require(
        not d.synthetic_pairs or d.format == "preference",
        "data.synthetic_pairs",
        f"generated preference pairs are for judge training (data.format=preference), got data.format="
        f"{d.format}; set data.synthetic_pairs=0",
    )
    require(
        not d.synthetic_pairs or d.generate_dir is not None,
        "data.synthetic_pairs",
        f"{d.synthetic_pairs} pairs to generate, but generated data is written only under "
        "data.generate_dir, which is not set: set it to the folder of data.train_path (e.g. "
        f"data.generate_dir={Path(d.train_path).parent}) or set data.synthetic_pairs=0",
    )
    require(
        d.generate_dir is None or bool(d.generate_dir.strip()),
        "data.generate_dir",
        "must be null (generate nothing) or a folder, got an empty string",
    )
    require(d.arithmetic_max_operand >= 1, "data.arithmetic_max_operand", "must be at least 1")
    if d.format == "preference":
        expected = f"judge_{cfg.judge.mode}"
        require(
            cfg.reward.rule.startswith(expected) and not cfg.reward.rule_weights,
            "reward.rule",
            f"judge training (data.format=preference, judge.mode={cfg.judge.mode}) needs the rule {expected}"
            f" (optionally {expected}(correct=1,wrong=-1,format_fail=-1)), got {cfg.reward.rule!r}",
        )
        require(
            cfg.judge.think_budget < min(r.max_new_tokens, r.eval_max_new_tokens),
            "judge.think_budget",
            f"judge training generates rollout.max_new_tokens={r.max_new_tokens} / eval_max_new_tokens="
            f"{r.eval_max_new_tokens} tokens per judgment; the thinking budget {cfg.judge.think_budget} must "
            "leave room for the verdict",
        )
        j = cfg.judge  # the judge prompts are the rollout's prompts
        require(
            j.max_prompt_tokens + r.max_new_tokens <= cfg.model.max_model_len,
            "model.max_model_len",
            f"judge training renders prompts of up to judge.max_prompt_tokens={j.max_prompt_tokens} tokens "
            f"and samples rollout.max_new_tokens={r.max_new_tokens} after them, so the rollout engines need "
            f"model.max_model_len >= {j.max_prompt_tokens + r.max_new_tokens}, got {cfg.model.max_model_len}",
        )
    _validate_rules(cfg.reward)

    sequences = d.prompts_per_step * r.n_samples
    per_rank, rest = divmod(sequences, lr.num_ranks)
    require(
        rest == 0,
        "learner.num_ranks",
        f"data.prompts_per_step x rollout.n_samples = {sequences} sequences per step must divide "
        f"evenly over {lr.num_ranks} learner ranks",
    )
    require(
        per_rank % a.mini_batches == 0,
        "algorithm.mini_batches",
        f"{per_rank} sequences per rank must split into {a.mini_batches} equal mini-batches",
    )
    require(
        not a.filter_flat_groups or a.kl_coef == 0,
        "algorithm.filter_flat_groups",
        "needs algorithm.kl_coef=0 (with a KL term a flat group still has a gradient)",
    )
    require(
        not a.filter_flat_groups or r.n_samples % (lr.num_ranks * a.mini_batches) == 0,
        "algorithm.filter_flat_groups",
        f"keeps whole groups, so rollout.n_samples={r.n_samples} must divide over learner.num_ranks x "
        f"algorithm.mini_batches = {lr.num_ranks * a.mini_batches}",
    )
    for key, level in (("rollout.sleep_level", r.sleep_level), ("judge.sleep_level", cfg.judge.sleep_level)):
        one_of(level, key, (1, 2))
    _validate_colocation(cfg)
    groups = placement_layout(cfg).groups
    weight_sync_method(cfg)  # rollout.weight_sync fits the device, placement and learner backend
    if c.device == "cuda":
        asked, parts = gpus_asked(groups)
        declared = c.num_nodes * c.gpus_per_node
        require(
            declared == 0 or asked <= declared,
            "cluster.gpus_per_node",
            f"the job asks for {asked:g} GPUs ({parts}; a bundle that colocated roles share counts once) "
            f"but the declared cluster has {declared} ({c.num_nodes} nodes x {c.gpus_per_node})",
        )
        require(
            not cfg.trainer.downstream_eval.enabled or declared == 0 or asked < declared,
            "trainer.downstream_eval.enabled",
            f"the downstream evaluation runs on 1 GPU outside the job's placement groups, but the job asks "
            f"for {asked:g} of the declared cluster's {declared} GPUs; leave one free, or set "
            "trainer.downstream_eval.enabled=false and run `rrm-ray downstream-eval` after training",
        )
        require(lr.gpus_per_rank == 1, "learner.gpus_per_rank", "each learner rank needs exactly 1 GPU")
        j = cfg.judge
        for prefix, gpus, tp in (
            ("rollout", r.gpus_per_engine, r.tensor_parallel_size),
            ("judge", j.gpus_per_engine, j.tensor_parallel_size),
        ):
            require(
                gpus == tp,
                f"{prefix}.gpus_per_engine",
                f"an engine with {prefix}.tensor_parallel_size={tp} needs that many GPUs, got {gpus:g}",
            )
    require(c.gpu_memory_gib > 0, "cluster.gpu_memory_gib", f"must be > 0, got {c.gpu_memory_gib:g}")
    validate_numbers(cfg)
    validate_timeouts(cfg)
    if c.address is None:
        local_cpus, local_gpus = local_resources(c)
        asked_cpu = sum(g.num_workers * g.cpus for g in groups.values())
        require(
            local_cpus is None or asked_cpu <= local_cpus,
            "cluster.local_num_cpus",
            f"the job asks for {asked_cpu:g} logical CPUs but the local Ray declares {local_cpus}",
        )
        asked_gpu, parts = gpus_asked(groups)
        require(
            local_gpus is None or asked_gpu <= local_gpus,
            "cluster.local_num_gpus",
            f"the job asks for {asked_gpu:g} GPUs ({parts}) but the local Ray `train` starts declares "
            f"{local_gpus}; leave cluster.local_num_gpus unset on cuda (Ray detects this machine's GPUs), "
            "or set cluster.address=auto to run on a started cluster",
        )


_COUNT_KEYS = {"rollout": "rollout.num_engines", "learner": "learner.num_ranks", "judge": "judge.num_engines"}
_GPU_KEYS = {
    "rollout": "rollout.gpus_per_engine",
    "learner": "learner.gpus_per_rank",
    "judge": "judge.gpus_per_engine",
}


def _validate_colocation(cfg: JobConfig) -> None:
    """Roles in one `cluster.colocate` group split the same bundles, so their shapes must agree."""
    seen: set[str] = set()
    for i, group in enumerate(cfg.cluster.colocate):
        key = f"cluster.colocate[{i}]"
        require(len(group) >= 2, key, f"a colocation group names at least 2 roles, got {list(group)}")
        for role in group:
            one_of(role, key, COLOCATABLE)
            require(
                role not in seen, key, f"role {role!r} is listed twice (a role shares one set of bundles)"
            )
            seen.add(role)
        require(
            "judge" not in group or cfg.judge.enabled, key, "colocating the judge needs judge.enabled=true"
        )
    for i, group in enumerate(cfg.cluster.colocate):
        key = f"cluster.colocate[{i}]"
        specs = {role: own_spec(cfg, role) for role in group}
        for attr, keys, what in (
            ("num_workers", _COUNT_KEYS, "counts (one worker of each role per shared bundle)"),
            ("strategy", {role: f"{role}.strategy" for role in group}, "strategies (one placement group)"),
            ("gpus", _GPU_KEYS, "GPUs per worker (one bundle shape)"),
        ):
            values = {role: getattr(spec, attr) for role, spec in specs.items()}
            require(
                len(set(values.values())) == 1,
                key,
                f"roles sharing bundles need equal {what}; got "
                + ", ".join(
                    f"{keys[role]}={value:g}" if attr == "gpus" else f"{keys[role]}={value}"
                    for role, value in values.items()
                ),
            )
        gpus = specs[group[0]].gpus
        require(
            cfg.cluster.device != "cuda" or gpus == 1,
            key,
            f"colocated roles need 1 GPU per worker on cuda (Ray gives an actor a fraction of ONE GPU, so a "
            f"shared engine runs with tensor_parallel_size=1); got {_GPU_KEYS[group[0]]}={gpus:g}",
        )


def _validate_rules(reward: RewardConfig) -> None:
    if reward.rule_weights:
        key, spec = "reward.rule_weights", dict(reward.rule_weights)
    else:
        key, spec = "reward.rule", reward.rule
    try:
        resolve_rule(spec)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def validate_learner_numerics(cfg: JobConfig) -> None:
    """The learner's numerics: log-prob chunking, precision, LR warmup, importance weights."""
    lr, a, r = cfg.learner, cfg.algorithm, cfg.rollout
    require(lr.logprob_chunk >= 1, "learner.logprob_chunk", f"must be at least 1, got {lr.logprob_chunk}")
    budget, longest = lr.max_tokens_per_microbatch, cfg.model.max_model_len
    require(
        budget == 0 or budget >= longest,
        "learner.max_tokens_per_microbatch",
        f"must be 0 (off: learner.micro_batch_size sequences per micro-batch) or at least "
        f"model.max_model_len={longest}, so that the longest sequence fits a micro-batch; got {budget}",
    )
    require(
        not (resolved_dtype(cfg) == "float16" and lr.backend == "fsdp2"),
        "model.dtype",
        "float16 training needs loss scaling, which the fsdp2 backend does not do; use model.dtype=bfloat16 "
        "or learner.backend=deepspeed (dynamic loss scaling)",
    )
    optimizer_steps = cfg.trainer.total_steps * a.mini_batches
    require(
        0 <= lr.warmup_steps <= optimizer_steps,
        "learner.warmup_steps",
        f"counts optimizer steps (trainer.total_steps x algorithm.mini_batches = {optimizer_steps}) and must "
        f"be in [0, {optimizer_steps}], got {lr.warmup_steps}",
    )
    # vLLM reports the log-probs of its processed distribution, after the nucleus (top-p) mask, while the
    # learner scores the full softmax: with top_p < 1 every kept token's learner probability is smaller,
    # so exp(learner - rollout) < 1 everywhere and TIS would scale every token's loss down by a bias.
    require(
        r.top_p == 1.0 or a.tis_cap is None,
        "rollout.top_p",
        f"rollout.top_p={r.top_p} < 1 cannot be combined with algorithm.tis_cap={a.tis_cap}: vLLM's sampled "
        "log-probs are renormalised over the top-p nucleus, the learner's are over the full vocabulary, so "
        "the truncated importance weights would be biased below 1; set rollout.top_p=1.0 or "
        "algorithm.tis_cap=null",
    )


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def validate_lora(cfg: JobConfig) -> None:
    """`learner.lora`: rank 0 is full training; the rest must be an adapter vLLM can serve and sync."""
    lo, r = cfg.learner.lora, cfg.rollout
    require(lo.rank >= 0, "learner.lora.rank", f"must be >= 0 (0: full training, no adapter), got {lo.rank}")
    if lo.rank == 0:
        return
    require(lo.rank <= VLLM_MAX_LORA_RANKS[-1], "learner.lora.rank", f"vLLM serves LoRA ranks up to "
            f"{VLLM_MAX_LORA_RANKS[-1]}, got {lo.rank}")  # fmt: skip
    require(
        lo.alpha > 0,
        "learner.lora.alpha",
        f"must be > 0 (the adapter's scale is alpha / rank), got {lo.alpha}",
    )
    require(0 <= lo.dropout < 1, "learner.lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    one_of(lo.sync, "learner.lora.sync", ("adapter", "merged"))
    targets = list(lo.target_modules)
    require(
        bool(targets) and len(set(targets)) == len(targets) and set(targets) <= set(LORA_TARGETS),
        "learner.lora.target_modules",
        f"must name each at most once some of the decoder's linear layers {', '.join(LORA_TARGETS)} (what "
        f"PEFT wraps, vLLM serves and the merged export folds back), got {targets}",
    )
    shared = placement_layout(cfg).roles["rollout"].shared  # colocated: it sleeps between turns
    require(
        lo.sync != "adapter" or not shared or r.sleep_level == 1,
        "rollout.sleep_level",
        "must be 1 with learner.lora.sync=adapter: a level-2 sleep discards the engine's weights and its "
        "LoRA slots, and adapter syncs never send the base weights again (set rollout.sleep_level=1, or "
        "learner.lora.sync=merged to send merged full weights after every wake)",
    )


def streaming_blockers(cfg: JobConfig) -> list[str]:
    """Why a batch cannot be scored as it streams out of the rollout (empty: it can)."""
    blockers = []
    if cfg.judge.enabled:
        blockers += [
            f"cluster.colocate puts the rollout and the judge on the same bundles ({group}): they take turns"
            for group in cfg.cluster.colocate
            if {"rollout", "judge"} <= set(group)
        ]
    if cfg.data.format == "preference" and cfg.judge.think_budget > 0:
        blockers.append(
            f"judge training with budget forcing (judge.think_budget={cfg.judge.think_budget}) generates in "
            "two phases"
        )
    return blockers


def streaming_enabled(cfg: JobConfig) -> bool:
    """Whether `reward.streaming` (auto | always | never) streams this job's batches."""
    mode = cfg.reward.streaming
    return mode == "always" or (mode == "auto" and not streaming_blockers(cfg))


def validate_streaming(cfg: JobConfig) -> None:
    mode = cfg.reward.streaming
    require(
        mode in ("auto", "always", "never"),
        "reward.streaming",
        f"must be auto, always or never, got {mode!r}",
    )
    if mode == "always":
        blockers = streaming_blockers(cfg)
        require(
            not blockers,
            "reward.streaming",
            f"always, but {'; '.join(blockers)}; set reward.streaming=auto or never",
        )


def validate_staleness(cfg: JobConfig) -> None:
    """Asynchronous GRPO: the bound, its importance correction, and roles that can overlap at all."""
    k, a = cfg.trainer.max_staleness, cfg.algorithm
    require(k >= 0, "trainer.max_staleness", f"must be >= 0 (0: synchronous), got {k}")
    if k == 0:
        return
    require(
        a.tis_cap is not None,
        "algorithm.tis_cap",
        f"trainer.max_staleness={k} trains on samples from engines up to {k} weight versions behind the "
        "learner; without the truncated importance weight the loss would treat them as on-policy. Set "
        "algorithm.tis_cap (e.g. 2.0) or trainer.max_staleness=0",
    )
    for group in cfg.cluster.colocate:
        overlapping = sorted({"rollout", "judge"} & set(group)) if "learner" in group else []
        require(
            not overlapping,
            "cluster.colocate",
            f"trainer.max_staleness={k} generates and judges while the learner trains, but {group} puts the "
            f"learner on the same bundles as {' and '.join(overlapping)}, which must take turns with it; "
            "give the learner bundles of its own or set trainer.max_staleness=0",
        )


def validate_dpo(cfg: JobConfig) -> None:
    """Checks that only matter for `rrm-ray dpo`."""
    ranks, per_step = cfg.learner.num_ranks, cfg.dpo.pairs_per_step
    require(cfg.judge.enabled, "judge.enabled", "`rrm-ray dpo` needs the RRM judge (set judge.enabled=true)")
    require(
        cfg.resume is None,
        "resume",
        "`rrm-ray dpo` writes no checkpoints to resume from; to start DPO from a GRPO checkpoint, export "
        "it (`rrm-ray export`) and set model.path to the export",
    )
    require(
        per_step >= ranks and per_step % ranks == 0,
        "dpo.pairs_per_step",
        f"must be a positive multiple of learner.num_ranks={ranks}, got {per_step}",
    )


def _replaced_value(key: str, value: object) -> None:
    """A value an earlier version documented fails with what says the same now (`REPLACED_VALUES`)."""
    if (key, value) in REPLACED_VALUES:
        raise ConfigError(f"{key}: {value!r} was {REPLACED_VALUES[(key, value)]}")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_judge(j: JudgeConfig) -> None:
    """The `judge` section on its own (its place in the job: `validate_judge_in_job`)."""
    one_of(j.mode, "judge.mode", ("rrm", "direct"))
    one_of(j.verdict, "judge.verdict", ("generate", "choice", "choice_prob"))
    require(
        j.verdict == "generate" or j.mode == "direct",
        "judge.verdict",
        f"'{j.verdict}' needs judge.mode=direct (an RRM reasons before its verdict, so it must sample), "
        f"got judge.mode={j.mode}",
    )
    require(
        j.verdict != "choice_prob" or j.votes == 1,
        "judge.votes",
        f"must be 1 with judge.verdict=choice_prob (both orders are scored once, exactly; there is nothing "
        f"to sample again), got {j.votes}",
    )
    _replaced_value("judge.prompt_style", j.prompt_style)
    one_of(j.prompt_style, "judge.prompt_style", CONFIG_PROMPT_STYLES)
    require(
        j.prompt_style != "rrm_release" or j.mode == "rrm",
        "judge.prompt_style",
        "rrm_release is the released RRMs' reasoning prompt and needs judge.mode=rrm; a DirectJudge uses "
        f"mtbench or compact (or auto), got judge.mode={j.mode}",
    )
    one_of(j.verdict_rule, "judge.verdict_rule", VERDICT_RULES)
    one_of(j.presentation, "judge.presentation", PRESENTATIONS)
    require(
        j.verdict != "choice_prob" or j.presentation == "both_orders",
        "judge.presentation",
        "judge.verdict=choice_prob scores both orders of every pair; set judge.presentation=both_orders",
    )
    require(
        j.think_budget == 0 or j.mode == "rrm",
        "judge.think_budget",
        f"a thinking budget needs judge.mode=rrm (a DirectJudge does not think), got judge.mode={j.mode}",
    )
    require(
        0 <= j.think_budget < j.max_new_tokens,
        "judge.think_budget",
        f"must be 0 (off) or below judge.max_new_tokens={j.max_new_tokens} (room for the verdict), "
        f"got {j.think_budget}",
    )
    _replaced_value("judge.over_length", j.over_length)
    one_of(j.over_length, "judge.over_length", OVER_LENGTH)
    one_of(j.tie_rule, "judge.tie_rule", ("random", "first", "none"))
    one_of(j.method, "judge.method", ("knockout", "elo", "swiss"))
    require(
        j.swiss_rounds is None or j.swiss_rounds >= 1,
        "judge.swiss_rounds",
        f"must be null (ceil(log2 n) rounds) or at least 1, got {j.swiss_rounds}",
    )
    one_of(j.rating, "judge.rating", ("bradley_terry", "elo"))
    one_of(j.reward_mix, "judge.reward_mix", ("judge_if_no_rule", "weighted"))
    one_of(j.strategy, "judge.strategy", ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    for key, value in (
        ("judge.votes", j.votes),
        ("judge.num_engines", j.num_engines),
        ("judge.tensor_parallel_size", j.tensor_parallel_size),
        ("judge.max_new_tokens", j.max_new_tokens),
        ("judge.max_prompt_tokens", j.max_prompt_tokens),
    ):
        require(value >= 1, key, f"must be at least 1, got {value}")
    require(j.temperature >= 0, "judge.temperature", "must be >= 0")
    require(0 < j.top_p <= 1, "judge.top_p", f"must be in (0, 1], got {j.top_p}")
    require(
        j.max_prompt_tokens + j.max_new_tokens <= j.max_model_len,
        "judge.max_model_len",
        f"must hold judge.max_prompt_tokens + judge.max_new_tokens = "
        f"{j.max_prompt_tokens + j.max_new_tokens}, got {j.max_model_len}",
    )
    require(j.batch_timeout_s > 0, "judge.batch_timeout_s", "must be > 0")
    validate_judge_endpoint(j)


def validate_judge_endpoint(j: JudgeConfig) -> None:
    """`judge.endpoint`: a served judge the job talks to over HTTP instead of starting engines."""
    e = j.endpoint
    require(
        e.max_concurrency >= 1, "judge.endpoint.max_concurrency", f"must be >= 1, got {e.max_concurrency}"
    )
    require(e.timeout_s > 0, "judge.endpoint.timeout_s", f"must be > 0 seconds, got {e.timeout_s}")
    require(e.retries >= 0, "judge.endpoint.retries", f"must be >= 0, got {e.retries}")
    if e.api_key_env is not None:
        require(
            bool(_ENV_NAME.match(e.api_key_env)),
            "judge.endpoint.api_key_env",
            "must be the NAME of an environment variable that holds the key (letters, digits and _, e.g. "
            "RRM_JUDGE_API_KEY), never the key itself",
        )
    if e.url is None:
        return
    urls = [u.strip() for u in e.url.split(",")]
    for url in urls:
        require(
            re.match(r"^https?://[^/\s]+", url) is not None,
            "judge.endpoint.url",
            f"expected http://host:port (several separated by commas), got {url!r}",
        )
    require(
        j.think_budget == 0,
        "judge.think_budget",
        "budget forcing writes </think> inside the engine between two generation phases; a judge behind "
        "judge.endpoint.url cannot; set judge.think_budget=0",
    )


def validate_judge_in_job(cfg: JobConfig) -> None:
    """The judge against the rest of the job: a served judge (`judge.endpoint.url`) has no bundles to
    share, and the judge-training reward reads verdicts by `judge.verdict_rule`."""
    j = cfg.judge
    if j.endpoint.url is not None:
        for i, group in enumerate(cfg.cluster.colocate):
            require(
                "judge" not in group,
                f"cluster.colocate[{i}]",
                f"judge.endpoint.url={j.endpoint.url} serves the judge outside this job: it has no bundles "
                "to share; take judge out of cluster.colocate",
            )
    rule = cfg.reward.rule.replace(" ", "")
    stated = re.search(r"verdict_rule=(\w+)", rule)
    require(
        stated is None or stated.group(1) == j.verdict_rule,
        "reward.rule",
        f"names verdict_rule={stated.group(1) if stated else ''} but judge.verdict_rule={j.verdict_rule}: "
        "judge training reads verdicts by judge.verdict_rule (one rule for training and evaluation); "
        "set it there and drop verdict_rule from reward.rule",
    )
