"""Typed job configuration: dataclass schemas, YAML + dotlist loading, and up-front validation.

Every knob a user may turn lives here and in `configs/*.yaml`. Loading goes through
`OmegaConf.structured` in struct mode, so an unknown key or a value of the wrong type fails with the
key's full name before Ray is touched; `validate()` then checks the values against each other and
against the declared cluster shape, and every message says which key is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem, with the offending key and what is allowed."""


@dataclass
class ClusterConfig:
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:port": connect
    device: str = "cpu"  # cpu | cuda: decides bundles ({"CPU"} vs {"GPU"}), dtypes and backends
    local_num_cpus: int = 8  # logical CPUs a local Ray declares (roles take fractions of them)
    local_num_gpus: int = 0
    # Declared cluster shape, checked by validate() so a profile fails before submission.
    # 0 means unknown (checked against the live cluster after connecting instead).
    num_nodes: int = 0
    gpus_per_node: int = 0
    placement_timeout_s: float = 120.0  # waiting longer than this for resources is an error
    call_timeout_s: float = 1800.0  # every remote call waits at most this long
    # A dead rollout/judge/reward actor is restarted and its call retried this many times (per actor);
    # the learner is rebuilt from a checkpoint at most this many times (rrm_ray/recovery.py).
    max_actor_restarts: int = 2
    env: dict[str, str] = field(default_factory=dict)  # extra env vars for every actor
    # Roles that share GPUs, e.g. [[rollout, judge]] or [[rollout, judge, learner]]: one placement group
    # whose every bundle the k roles split (each asks 1/k of its CPU and GPU). On GPU the engines sleep
    # (rollout.sleep_level, judge.sleep_level) while another role of the group works. Roles in a group
    # need equal counts, strategies and (cuda) 1 GPU per worker.
    colocate: list[list[str]] = field(default_factory=list)
    gpu_memory_gib: float = 80.0  # memory of one GPU, for `rrm-ray plan`'s estimate (H100/A100 80 GB)
    # false: actor and engine output goes to <checkpoint.dir>/logs/<job>-<time>.log (path printed at
    # start); true (`--verbose`): streamed to the console as Ray does by default
    stream_worker_logs: bool = False


@dataclass
class ModelConfig:
    path: str = "smollm2"  # a local HF directory, or "smollm2" (the packaged SmolLM2-135M-Instruct)
    dtype: str = "auto"  # auto (float32 on cpu, bfloat16 on cuda) | float32 | bfloat16 | float16
    max_model_len: int = 512
    use_chat_template: bool = True
    system_prompt: str | None = None


@dataclass
class RolloutConfig:
    num_engines: int = 1
    cpus_per_engine: float = 1.0
    gpus_per_engine: float = 1.0  # used only when cluster.device == cuda
    tensor_parallel_size: int = 1  # GPUs one engine shards the model over (= gpus_per_engine on cuda)
    strategy: str = "PACK"
    n_samples: int = 8  # responses per prompt (the GRPO group size)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    eval_max_new_tokens: int = 128
    kv_cache_gib: float = 1.0  # VLLM_CPU_KVCACHE_SPACE on cpu (whole GiB)
    gpu_memory_utilization: float = 0.5
    threads: int = 2  # torch / OpenMP threads of an engine on cpu
    weight_bucket_mb: int = 64  # weight sync sends parameters in chunks of about this size (packed)
    # learner -> engine weights, through vLLM's weight-transfer engines (rrm_ray.weight_sync):
    # auto (ipc when the engines share the learner's GPUs, else collective) | collective (NCCL on
    # cuda, gloo on cpu) | ipc (CUDA IPC, colocated, fsdp2) | object_store (Ray objects: fallback)
    weight_sync: str = "auto"
    max_num_batched_tokens: int = 16384  # vLLM scheduler budget per step
    # Colocated on GPU (cluster.colocate): 1 moves the weights to CPU memory while asleep, 2 drops them
    # (less host memory; the learner's weights are synced again on waking).
    sleep_level: int = 1


@dataclass
class LearnerConfig:
    backend: str = "fsdp2"  # fsdp2 | deepspeed
    zero_stage: int = 3  # deepspeed: ZeRO stage 2 or 3
    offload_optimizer: bool = False  # deepspeed on cuda: optimizer state in CPU memory
    offload_params: bool = False  # deepspeed ZeRO-3 on cuda: parameters in CPU memory
    num_ranks: int = 2
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 1.0
    strategy: str = "PACK"
    threads: int = 1  # torch threads per rank on cpu
    micro_batch_size: int = 4  # sequences per forward/backward on one rank
    lr: float = 1e-5
    lr_schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0  # optimizer steps (a training step makes algorithm.mini_batches of them)
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0
    # Positions whose [chunk, vocab] logits are built at once (then dropped; recomputed in backward)
    logprob_chunk: int = 1024
    gradient_checkpointing: bool = False


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    scale_by_std: bool = True  # False: Dr. GRPO (advantage = reward - group mean)
    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: the asymmetric "clip-higher" variant
    kl_coef: float = 0.0  # > 0 adds a k3 KL penalty to a frozen reference copy
    tis_cap: float | None = 2.0  # truncated importance weight for vLLM-vs-learner log-prob drift; null: off
    mini_batches: int = 1  # optimizer steps per batch (>1 needs old log-probs before updating)
    # Train only on groups whose rewards differ (DAPO's filter, without re-sampling): the others have
    # zero advantage, so with kl_coef=0 skipping them saves compute and changes no gradient direction
    # (the token-mean is then taken over the informative tokens only). No such group: no update.
    filter_flat_groups: bool = False


@dataclass
class RewardConfig:
    rule: str = "arithmetic"  # a name from rrm_ray.rewards.rules or "package.module:function"
    rule_weights: dict[str, float] = field(default_factory=dict)  # if set: weighted sum of these rules
    accuracy_rule: str | None = None  # "accuracy" = this rule > 0; default: the first weighted rule, or rule
    timeout_s: float = 5.0
    fallback: float = 0.0  # reward of an item whose rule timed out or raised
    num_workers: int = 1
    cpus: float = 0.5
    # auto | always | never. always: each prompt's group goes to the rule actor and the judge as soon as its n
    # samples are generated, so scoring and judging overlap generation (rrm_ray.clients.streaming);
    # never: the whole batch is generated, then scored. auto: streams, unless the rollout and the judge share
    # bundles (cluster.colocate: they take turns) or judge training uses budget forcing (two-phase
    # generation); `always` with either is a config error.
    streaming: str = "auto"


@dataclass
class JudgeConfig:
    """The RRM judge: a vLLM engine that reasons, then says which of two responses is better."""

    enabled: bool = False  # GRPO with RRM rewards (and the judge/eval/best-of-n commands) use it
    model_path: str = "smollm2"  # HF directory or "smollm2"; the RRM paper used DeepSeek-R1-Distill-Qwen
    mode: str = "rrm"  # rrm: think, then verdict | direct: verdict only (the DirectJudge baseline)
    # generate: the verdict is free text, parsed | choice (direct only): the engine may only pick the
    # token "1" or "2" after "\\boxed{Assistant ", so every vote counts (for small, untrained judges)
    # | choice_prob (direct only, votes=1): no sampling; one forward per order gives P("1"), P("2") at
    # that position, renormalised over both, averaged over the two orders: a wins if mean P(a) > 0.5,
    # exactly 0.5 goes to judge.tie_rule (rrm_ray.judge.voting.prob_winner)
    verdict: str = "generate"
    prompt_style: str = (
        "full"  # full: the paper-style prompt | compact: short, with a reply example (small judges)
    )
    # rrm mode, > 0: budget forcing. Thinking stops after this many tokens; the engine then writes
    # "</think>" itself (masked out of the loss in judge training) and the judge goes on to its verdict.
    think_budget: int = 0
    num_engines: int = 1
    cpus_per_engine: float = 1.0
    gpus_per_engine: float = 1.0
    tensor_parallel_size: int = 1  # GPUs one judge engine shards the model over (= gpus_per_engine on cuda)
    strategy: str = "PACK"
    # Colocated on GPU (cluster.colocate): 1 keeps the weights in CPU memory while asleep, 2 drops them
    # (reloaded from judge.model_path on waking).
    sleep_level: int = 1
    temperature: float = 0.6  # paper defaults: 0.6 / 1.0 / 8192
    top_p: float = 1.0
    max_new_tokens: int = 8192
    max_model_len: int = 16384
    max_prompt_tokens: int = 4096
    over_length: str = "truncate"  # truncate (documented rule in rrm_ray.judge.prompts) | reject
    votes: int = 1  # sampled judgments per pair (majority), both presentation orders
    adaptive_votes: bool = True  # stop sampling once the remaining votes cannot change the majority
    tie_rule: str = "random"  # random | first | none
    # knockout (n-1 comparisons) | elo (round robin, n(n-1)/2) | swiss (swiss_rounds x floor(n/2));
    # README "Which tournament" compares them per judge call
    method: str = "knockout"
    swiss_rounds: int | None = None  # swiss: rounds per group; null = ceil(log2 n); capped at n-1 (odd n: n)
    rating: str = "bradley_terry"  # for elo: bradley_terry | elo
    k_factor: float = 32.0
    batch_timeout_s: float = 1800.0  # one engine batch; a timed-out batch counts as undecided
    cache_max_entries: int = 100_000
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.4
    threads: int = 2
    # vLLM's automatic prefix caching: the prompt head all pairs of a query share (system prompt and
    # question) is computed once; judge/prefix_cache_hit_rate reports the share of prompt tokens it saved
    prefix_caching: bool = True
    # How judge rewards meet rule rewards in GRPO:
    reward_mix: str = "judge_if_no_rule"  # judge_if_no_rule | weighted
    rule_weight: float = 1.0
    judge_weight: float = 1.0


@dataclass
class DataConfig:
    train_path: str = "data/arithmetic/train.jsonl"
    eval_path: str | None = "data/arithmetic/eval.jsonl"
    prompt_field: str = "prompt"
    answer_field: str | None = "answer"
    prompts_per_step: int = 4
    eval_max_prompts: int = 64
    shuffle: bool = True
    # Generated data (no download) is written ONLY inside this folder: a train/eval path under it that
    # does not exist yet is generated (the arithmetic task for data.format=prompts, data.synthetic_pairs
    # verifiable pairs for preference); a missing path anywhere else is an error naming it, so a typo
    # in a data path never trains on made-up data. null: nothing is ever generated.
    generate_dir: str | None = None
    # Judge training (the policy is the judge): preference pairs become judge prompts with a label.
    format: str = "prompts"  # prompts | preference
    preference_format: str = "generic"  # generic | skywork | tulu | hh_rlhf
    # raise | skip: a row that cannot be used (training pair, benchmark item in `rrm-ray eval`) raises
    # naming file, row and field, or is skipped, counted and reported
    on_error: str = "raise"
    synthetic_pairs: int = 0  # pairs generated under data.generate_dir (+1/4 held out); format=preference
    # trivial (a one-line sum vs one off by a large amount) | easy (about two-digit numbers) | medium | hard
    synthetic_difficulty: str = "medium"
    # format=preference: every GRPO group shows its pair in both orders, half the samples each, and each
    # half is its own baseline (rrm_ray.algo.group_advantages subgroups): a judge that always names one
    # position earns zero advantage. Needs an even rollout.n_samples. false: one order per group.
    order_balanced: bool = True
    difficulty_filter_k: int = 0  # > 0: drop pairs the starting model already gets right k times out of k
    arithmetic_max_operand: int = 9  # operands of the generated task are drawn from 1..this


@dataclass
class DPOConfig:
    """`rrm-ray dpo`: two policy samples per prompt, the RRM judge picks, DPO trains on the pairs."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    epochs: int = 1
    pairs_per_step: int = 8  # pairs per optimizer step (a multiple of learner.num_ranks)
    max_prompts: int = 64  # prompts sampled for pairs


@dataclass
class DownstreamEvalConfig:
    """lm-eval multiple-choice accuracy of the policy on local MMLU-Pro / GPQA files (rrm_ray.downstream),
    on cluster.device in model.dtype; `rrm-ray downstream-eval` evaluates any model with these keys."""

    enabled: bool = False  # rrm-ray train: model.path before training and the final policy after it
    # task name -> local file. A name is its format (mmlu_pro | gpqa) alone or with _label (gpqa_diamond).
    # mmlu_pro: .jsonl/.json/.parquet rows {question, options, answer, answer_index, category};
    # gpqa: .csv (GPQA's own) or .jsonl/.json/.parquet rows {Question, Correct Answer, Incorrect Answer 1-3}
    tasks: dict[str, str] = field(default_factory=dict)
    limit: int | None = None  # the first N rows of each file; null: all
    batch_size: int = 8  # sequences per forward pass in lm-eval's HF backend
    num_fewshot: int = 0  # > 0: examples drawn from the evaluated rows (never the question itself)
    gpqa_option_seed: int = 0  # GPQA's four options are shuffled per row from this and the question text


@dataclass
class TrainerConfig:
    total_steps: int = 15
    eval_every: int = 0  # 0: evaluate only before and after training
    # Stop training after the step that reaches this many minutes of training (the first evaluation and
    # engine starts not counted), then evaluate and save as at total_steps; null: no limit. The LR
    # schedule still counts total_steps: with a limit, prefer a constant schedule.
    time_limit_min: float | None = None
    seed: int = 1
    log_samples: int = 8  # generations kept in the MLflow samples table per step
    # Asynchronous GRPO (rrm_ray.pipeline): the next batches are generated and scored while the learner
    # trains, each trained at most this many policy versions after the weights that generated it; the
    # lag is corrected by algorithm.tis_cap. 0: synchronous (generate, score, update, sync in turn).
    max_staleness: int = 0
    downstream_eval: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///runs/mlflow.db"
    experiment: str = "rrm-ray"  # created tagged as a model-training experiment (mlflow.experimentKind)
    run_name: str | None = None  # None: "<job>-<model dir>-<YYYYMMDD-HHMM>", e.g. grpo-SmolLM2-135M-...
    enabled: bool = True
    http_retries: int = 1  # MLflow HTTP retries before a call is buffered locally (server down)
    http_timeout_s: float = 10.0
    # MLflow system metrics of the driver's machine (CPU, memory, disk, network; GPU with nvidia-ml-py)
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    # The final policy as an MLflow logged model, the run's output: none | path (records the HF
    # directory's path, no copy) | artifacts (also copies the directory into MLflow's artifact store)
    log_model: str = "path"
    registered_model: str | None = None  # a name: the final policy also becomes a version of it


def validate_tracking(cfg: JobConfig) -> None:
    """The `tracking` section (called by `validate`)."""
    t = cfg.tracking
    _one_of(t.log_model, "tracking.log_model", ("none", "path", "artifacts"))
    _require(
        t.system_metrics_interval_s > 0,
        "tracking.system_metrics_interval_s",
        f"must be > 0 seconds, got {t.system_metrics_interval_s}",
    )
    _require(t.run_name is None or t.run_name.strip() != "", "tracking.run_name", "must be null or non-empty")
    if t.registered_model is not None:
        _require(t.registered_model.strip() != "", "tracking.registered_model", "must be null or a name")
        _require(
            t.log_model != "none" and cfg.checkpoint.save_final,
            "tracking.registered_model",
            "registers the final policy, so it needs tracking.log_model=path or artifacts and "
            f"checkpoint.save_final=true (got {t.log_model} and {cfg.checkpoint.save_final})",
        )


@dataclass
class CheckpointConfig:
    dir: str = "runs/checkpoints"
    every: int = 0  # 0: no intermediate checkpoints
    keep_last: int = 2
    save_final: bool = True  # write the final policy in HF format and log its path to MLflow


@dataclass
class JobConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # "auto": the latest complete checkpoint in checkpoint.dir; or a step_N path


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Merge schema defaults, a YAML file and `key=value` overrides; then validate.

    Returns a typed `JobConfig` object (a dataclass instance), so later code cannot grow keys.
    """
    merged: DictConfig = OmegaConf.structured(JobConfig)
    OmegaConf.set_struct(merged, True)
    _open_free_form_dicts(merged)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))  # type: ignore[assignment]
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain(exc, f"in {path}")) from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))  # type: ignore[assignment]
        except OmegaConfBaseException as exc:
            raise ConfigError(_explain(exc, "in a command-line override")) from None
    cfg: JobConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg


def _open_free_form_dicts(node: DictConfig) -> None:
    """Struct mode closes every node; plain `dict[str, ...]` fields (env vars, rule weights) take any key."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if OmegaConf.get_type(child) is dict:
                OmegaConf.set_struct(child, False)
            else:
                _open_free_form_dicts(child)


# Keys that earlier versions documented, and what says the same now.
REPLACED_KEYS = {
    "judge.colocate_with_rollout": "use cluster.colocate=[[rollout,judge]] (any roles can share bundles)",
    "data.generate_arithmetic": "set data.generate_dir=DIR: missing data files under DIR are generated",
}


def _explain(exc: OmegaConfBaseException, origin: str) -> str:
    key = getattr(exc, "full_key", None)
    where = f" {origin}"
    msg = str(exc).splitlines()[0]
    if "Key '" in msg and "not in" in msg:
        if key in REPLACED_KEYS:
            return f"config key {key!r}{where} was replaced: {REPLACED_KEYS[key]}"
        known = _known_keys(key)
        return f"unknown config key {key!r}{where}; allowed keys here: {', '.join(known)}"
    return f"bad value for config key {key!r}{where}: {msg}"


def _known_keys(full_key: str | None) -> list[str]:
    node: Any = JobConfig
    for part in (full_key or "").split(".")[:-1]:
        if not dataclasses.is_dataclass(node):
            break
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            break
        node = fields[part].default_factory  # type: ignore[assignment]
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return [f.name for f in dataclasses.fields(JobConfig)]


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: Any, key: str, allowed: tuple[Any, ...]) -> None:
    _require(value in allowed, key, f"got {value!r}, allowed: {', '.join(map(str, allowed))}")


def validate(cfg: JobConfig) -> None:
    """Check values against each other and the declared cluster; raise ConfigError naming the key."""
    c, r, lr, a, d = cfg.cluster, cfg.rollout, cfg.learner, cfg.algorithm, cfg.data
    _one_of(c.device, "cluster.device", ("cpu", "cuda"))
    _one_of(cfg.model.dtype, "model.dtype", ("auto", "float32", "bfloat16", "float16"))
    _one_of(lr.backend, "learner.backend", ("fsdp2", "deepspeed"))
    _one_of(lr.lr_schedule, "learner.lr_schedule", ("constant", "cosine", "linear"))
    _one_of(lr.zero_stage, "learner.zero_stage", (2, 3))
    _require(
        not lr.offload_params or lr.zero_stage == 3, "learner.offload_params", "needs learner.zero_stage=3"
    )
    _require(
        c.device == "cuda" or not (lr.offload_params or lr.offload_optimizer),
        "learner.offload_optimizer",
        "offloading only applies with cluster.device=cuda (on cpu everything is in CPU memory already)",
    )
    _one_of(a.name, "algorithm.name", ("grpo",))
    for key, strategy in (("rollout.strategy", r.strategy), ("learner.strategy", lr.strategy)):
        _one_of(strategy, key, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
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
        _require(value >= 1, key, f"must be at least 1, got {value}")
    _require(lr.lr > 0, "learner.lr", f"must be positive, got {lr.lr}")
    _require(0 <= a.clip_low < 1, "algorithm.clip_low", f"must be in [0, 1), got {a.clip_low}")
    _require(a.clip_high >= 0, "algorithm.clip_high", f"must be >= 0, got {a.clip_high}")
    _require(a.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {a.kl_coef}")
    _require(a.tis_cap is None or a.tis_cap >= 1, "algorithm.tis_cap", "must be null or >= 1")
    _require(r.temperature > 0, "rollout.temperature", "must be > 0 (use eval for greedy decoding)")
    _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    validate_learner_numerics(cfg)
    _require(cfg.reward.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _require(c.placement_timeout_s > 0, "cluster.placement_timeout_s", "must be > 0")
    _require(c.call_timeout_s > 0, "cluster.call_timeout_s", "must be > 0")
    _require(  # Ray reads -1 as "restart forever"; the driver counts restarts against this budget
        c.max_actor_restarts >= 0, "cluster.max_actor_restarts", f"must be >= 0, got {c.max_actor_restarts}"
    )
    _require(r.n_samples >= 2, "rollout.n_samples", "GRPO needs at least 2 samples per prompt")
    _require(
        cfg.trainer.time_limit_min is None or cfg.trainer.time_limit_min > 0,
        "trainer.time_limit_min",
        f"must be null or > 0 minutes, got {cfg.trainer.time_limit_min}",
    )
    validate_staleness(cfg)
    validate_streaming(cfg)
    _require(
        not (d.format == "preference" and d.order_balanced) or r.n_samples % 2 == 0,
        "rollout.n_samples",
        f"data.order_balanced shows each pair in both orders, half the group each: n_samples must be even, "
        f"got {r.n_samples} (or set data.order_balanced=false)",
    )
    validate_judge(cfg.judge)
    validate_tracking(cfg)
    from rrm_ray.downstream import validate_settings  # Ray-free; imports this module lazily

    validate_settings(cfg.trainer.downstream_eval)
    _require(
        not cfg.trainer.downstream_eval.enabled or cfg.checkpoint.save_final,
        "trainer.downstream_eval.enabled",
        "evaluates the final policy from its HF directory, which needs checkpoint.save_final=true",
    )
    _require(cfg.dpo.beta > 0, "dpo.beta", f"must be > 0, got {cfg.dpo.beta}")
    _require(0 <= cfg.dpo.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
    _one_of(d.format, "data.format", ("prompts", "preference"))
    _one_of(d.preference_format, "data.preference_format", ("generic", "skywork", "tulu", "hh_rlhf"))
    _one_of(d.on_error, "data.on_error", ("raise", "skip"))
    _one_of(d.synthetic_difficulty, "data.synthetic_difficulty", ("trivial", "easy", "medium", "hard"))
    _require(d.synthetic_pairs >= 0, "data.synthetic_pairs", f"must be >= 0, got {d.synthetic_pairs}")
    _require(
        not d.synthetic_pairs or d.format == "preference",
        "data.synthetic_pairs",
        f"generated preference pairs are for judge training (data.format=preference), got data.format="
        f"{d.format}; set data.synthetic_pairs=0",
    )
    _require(
        not d.synthetic_pairs or d.generate_dir is not None,
        "data.synthetic_pairs",
        f"{d.synthetic_pairs} pairs to generate, but generated data is written only under "
        "data.generate_dir, which is not set: set it to the folder of data.train_path (e.g. "
        f"data.generate_dir={Path(d.train_path).parent}) or set data.synthetic_pairs=0",
    )
    _require(
        d.generate_dir is None or bool(d.generate_dir.strip()),
        "data.generate_dir",
        "must be null (generate nothing) or a folder, got an empty string",
    )
    _require(d.arithmetic_max_operand >= 1, "data.arithmetic_max_operand", "must be at least 1")
    if d.format == "preference":
        expected = f"judge_{cfg.judge.mode}"
        _require(
            cfg.reward.rule.startswith(expected) and not cfg.reward.rule_weights,
            "reward.rule",
            f"judge training (data.format=preference, judge.mode={cfg.judge.mode}) needs the rule {expected}"
            f" (optionally {expected}(correct=1,wrong=-1,format_fail=-1)), got {cfg.reward.rule!r}",
        )
        _require(
            cfg.judge.think_budget < min(r.max_new_tokens, r.eval_max_new_tokens),
            "judge.think_budget",
            f"judge training generates rollout.max_new_tokens={r.max_new_tokens} / eval_max_new_tokens="
            f"{r.eval_max_new_tokens} tokens per judgment; the thinking budget {cfg.judge.think_budget} must "
            "leave room for the verdict",
        )
    _validate_rules(cfg.reward)

    sequences = d.prompts_per_step * r.n_samples
    per_rank, rest = divmod(sequences, lr.num_ranks)
    _require(
        rest == 0,
        "learner.num_ranks",
        f"data.prompts_per_step x rollout.n_samples = {sequences} sequences per step must divide "
        f"evenly over {lr.num_ranks} learner ranks",
    )
    _require(
        per_rank % a.mini_batches == 0,
        "algorithm.mini_batches",
        f"{per_rank} sequences per rank must split into {a.mini_batches} equal mini-batches",
    )
    _require(
        not a.filter_flat_groups or a.kl_coef == 0,
        "algorithm.filter_flat_groups",
        "needs algorithm.kl_coef=0 (with a KL term a flat group still has a gradient)",
    )
    _require(
        not a.filter_flat_groups or r.n_samples % (lr.num_ranks * a.mini_batches) == 0,
        "algorithm.filter_flat_groups",
        f"keeps whole groups, so rollout.n_samples={r.n_samples} must divide over learner.num_ranks x "
        f"algorithm.mini_batches = {lr.num_ranks * a.mini_batches}",
    )
    for key, level in (("rollout.sleep_level", r.sleep_level), ("judge.sleep_level", cfg.judge.sleep_level)):
        _one_of(level, key, (1, 2))
    _validate_colocation(cfg)
    from rrm_ray.placement import gpus_asked, plan_placement  # Ray-free; imports this module lazily

    groups = plan_placement(cfg).groups
    weight_sync_method(cfg)  # rollout.weight_sync fits the device, placement and learner backend
    if c.device == "cuda":
        asked, parts = gpus_asked(groups)
        declared = c.num_nodes * c.gpus_per_node
        _require(
            declared == 0 or asked <= declared,
            "cluster.gpus_per_node",
            f"the job asks for {asked:g} GPUs ({parts}; a bundle that colocated roles share counts once) "
            f"but the declared cluster has {declared} ({c.num_nodes} nodes x {c.gpus_per_node})",
        )
        _require(
            not cfg.trainer.downstream_eval.enabled or declared == 0 or asked < declared,
            "trainer.downstream_eval.enabled",
            f"the downstream evaluation runs on 1 GPU outside the job's placement groups, but the job asks "
            f"for {asked:g} of the declared cluster's {declared} GPUs; leave one free, or set "
            "trainer.downstream_eval.enabled=false and run `rrm-ray downstream-eval` after training",
        )
        _require(lr.gpus_per_rank == 1, "learner.gpus_per_rank", "each learner rank needs exactly 1 GPU")
        j = cfg.judge
        for prefix, gpus, tp in (
            ("rollout", r.gpus_per_engine, r.tensor_parallel_size),
            ("judge", j.gpus_per_engine, j.tensor_parallel_size),
        ):
            _require(
                gpus == tp,
                f"{prefix}.gpus_per_engine",
                f"an engine with {prefix}.tensor_parallel_size={tp} needs that many GPUs, got {gpus:g}",
            )
    _require(c.gpu_memory_gib > 0, "cluster.gpu_memory_gib", f"must be > 0, got {c.gpu_memory_gib:g}")
    if c.address is None and c.device == "cpu":
        asked_cpu = sum(g.num_workers * g.cpus for g in groups.values())
        _require(
            asked_cpu <= c.local_num_cpus,
            "cluster.local_num_cpus",
            f"the job asks for {asked_cpu:g} logical CPUs but the local Ray declares {c.local_num_cpus}",
        )


_COUNT_KEYS = {"rollout": "rollout.num_engines", "learner": "learner.num_ranks", "judge": "judge.num_engines"}
_GPU_KEYS = {
    "rollout": "rollout.gpus_per_engine",
    "learner": "learner.gpus_per_rank",
    "judge": "judge.gpus_per_engine",
}


def _validate_colocation(cfg: JobConfig) -> None:
    """Roles in one `cluster.colocate` group split the same bundles, so their shapes must agree."""
    from rrm_ray.placement import COLOCATABLE, own_spec

    seen: set[str] = set()
    for i, group in enumerate(cfg.cluster.colocate):
        key = f"cluster.colocate[{i}]"
        _require(len(group) >= 2, key, f"a colocation group names at least 2 roles, got {list(group)}")
        for role in group:
            _one_of(role, key, COLOCATABLE)
            _require(
                role not in seen, key, f"role {role!r} is listed twice (a role shares one set of bundles)"
            )
            seen.add(role)
        _require(
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
            _require(
                len(set(values.values())) == 1,
                key,
                f"roles sharing bundles need equal {what}; got "
                + ", ".join(
                    f"{keys[role]}={value:g}" if attr == "gpus" else f"{keys[role]}={value}"
                    for role, value in values.items()
                ),
            )
        gpus = specs[group[0]].gpus
        _require(
            cfg.cluster.device != "cuda" or gpus == 1,
            key,
            f"colocated roles need 1 GPU per worker on cuda (Ray gives an actor a fraction of ONE GPU, so a "
            f"shared engine runs with tensor_parallel_size=1); got {_GPU_KEYS[group[0]]}={gpus:g}",
        )


def _validate_rules(reward: RewardConfig) -> None:
    from rrm_ray.rewards.rules import resolve_rule

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
    _require(lr.logprob_chunk >= 1, "learner.logprob_chunk", f"must be at least 1, got {lr.logprob_chunk}")
    _require(
        not (resolved_dtype(cfg) == "float16" and lr.backend == "fsdp2"),
        "model.dtype",
        "float16 training needs loss scaling, which the fsdp2 backend does not do; use model.dtype=bfloat16 "
        "or learner.backend=deepspeed (dynamic loss scaling)",
    )
    optimizer_steps = cfg.trainer.total_steps * a.mini_batches
    _require(
        0 <= lr.warmup_steps <= optimizer_steps,
        "learner.warmup_steps",
        f"counts optimizer steps (trainer.total_steps x algorithm.mini_batches = {optimizer_steps}) and must "
        f"be in [0, {optimizer_steps}], got {lr.warmup_steps}",
    )
    # vLLM reports the log-probs of its processed distribution, after the nucleus (top-p) mask, while the
    # learner scores the full softmax: with top_p < 1 every kept token's learner probability is smaller,
    # so exp(learner - rollout) < 1 everywhere and TIS would scale every token's loss down by a bias.
    _require(
        r.top_p == 1.0 or a.tis_cap is None,
        "rollout.top_p",
        f"rollout.top_p={r.top_p} < 1 cannot be combined with algorithm.tis_cap={a.tis_cap}: vLLM's sampled "
        "log-probs are renormalised over the top-p nucleus, the learner's are over the full vocabulary, so "
        "the truncated importance weights would be biased below 1; set rollout.top_p=1.0 or "
        "algorithm.tis_cap=null",
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
    _require(
        mode in ("auto", "always", "never"),
        "reward.streaming",
        f"must be auto, always or never, got {mode!r}",
    )
    if mode == "always":
        blockers = streaming_blockers(cfg)
        _require(
            not blockers,
            "reward.streaming",
            f"always, but {'; '.join(blockers)}; set reward.streaming=auto or never",
        )


def validate_staleness(cfg: JobConfig) -> None:
    """Asynchronous GRPO: the bound, its importance correction, and roles that can overlap at all."""
    k, a = cfg.trainer.max_staleness, cfg.algorithm
    _require(k >= 0, "trainer.max_staleness", f"must be >= 0 (0: synchronous), got {k}")
    if k == 0:
        return
    _require(
        a.tis_cap is not None,
        "algorithm.tis_cap",
        f"trainer.max_staleness={k} trains on samples from engines up to {k} weight versions behind the "
        "learner; without the truncated importance weight the loss would treat them as on-policy. Set "
        "algorithm.tis_cap (e.g. 2.0) or trainer.max_staleness=0",
    )
    for group in cfg.cluster.colocate:
        overlapping = sorted({"rollout", "judge"} & set(group)) if "learner" in group else []
        _require(
            not overlapping,
            "cluster.colocate",
            f"trainer.max_staleness={k} generates and judges while the learner trains, but {group} puts the "
            f"learner on the same bundles as {' and '.join(overlapping)}, which must take turns with it; "
            "give the learner bundles of its own or set trainer.max_staleness=0",
        )


def validate_dpo(cfg: JobConfig) -> None:
    """Checks that only matter for `rrm-ray dpo`."""
    ranks, per_step = cfg.learner.num_ranks, cfg.dpo.pairs_per_step
    _require(cfg.judge.enabled, "judge.enabled", "`rrm-ray dpo` needs the RRM judge (set judge.enabled=true)")
    _require(
        cfg.resume is None,
        "resume",
        "`rrm-ray dpo` writes no checkpoints to resume from; to start DPO from a GRPO checkpoint, export "
        "it (`rrm-ray export`) and set model.path to the export",
    )
    _require(
        per_step >= ranks and per_step % ranks == 0,
        "dpo.pairs_per_step",
        f"must be a positive multiple of learner.num_ranks={ranks}, got {per_step}",
    )


def validate_judge(j: JudgeConfig) -> None:
    _one_of(j.mode, "judge.mode", ("rrm", "direct"))
    _one_of(j.verdict, "judge.verdict", ("generate", "choice", "choice_prob"))
    _require(
        j.verdict == "generate" or j.mode == "direct",
        "judge.verdict",
        f"'{j.verdict}' needs judge.mode=direct (an RRM reasons before its verdict, so it must sample), "
        f"got judge.mode={j.mode}",
    )
    _require(
        j.verdict != "choice_prob" or j.votes == 1,
        "judge.votes",
        f"must be 1 with judge.verdict=choice_prob (both orders are scored once, exactly; there is nothing "
        f"to sample again), got {j.votes}",
    )
    _one_of(j.prompt_style, "judge.prompt_style", ("full", "compact"))
    _require(
        j.think_budget == 0 or j.mode == "rrm",
        "judge.think_budget",
        f"a thinking budget needs judge.mode=rrm (a DirectJudge does not think), got judge.mode={j.mode}",
    )
    _require(
        0 <= j.think_budget < j.max_new_tokens,
        "judge.think_budget",
        f"must be 0 (off) or below judge.max_new_tokens={j.max_new_tokens} (room for the verdict), "
        f"got {j.think_budget}",
    )
    _one_of(j.over_length, "judge.over_length", ("truncate", "reject"))
    _one_of(j.tie_rule, "judge.tie_rule", ("random", "first", "none"))
    _one_of(j.method, "judge.method", ("knockout", "elo", "swiss"))
    _require(
        j.swiss_rounds is None or j.swiss_rounds >= 1,
        "judge.swiss_rounds",
        f"must be null (ceil(log2 n) rounds) or at least 1, got {j.swiss_rounds}",
    )
    _one_of(j.rating, "judge.rating", ("bradley_terry", "elo"))
    _one_of(j.reward_mix, "judge.reward_mix", ("judge_if_no_rule", "weighted"))
    _one_of(j.strategy, "judge.strategy", ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    for key, value in (
        ("judge.votes", j.votes),
        ("judge.num_engines", j.num_engines),
        ("judge.tensor_parallel_size", j.tensor_parallel_size),
        ("judge.max_new_tokens", j.max_new_tokens),
        ("judge.max_prompt_tokens", j.max_prompt_tokens),
    ):
        _require(value >= 1, key, f"must be at least 1, got {value}")
    _require(j.temperature >= 0, "judge.temperature", "must be >= 0")
    _require(0 < j.top_p <= 1, "judge.top_p", f"must be in (0, 1], got {j.top_p}")
    _require(
        j.max_prompt_tokens + j.max_new_tokens <= j.max_model_len,
        "judge.max_model_len",
        f"must hold judge.max_prompt_tokens + judge.max_new_tokens = "
        f"{j.max_prompt_tokens + j.max_new_tokens}, got {j.max_model_len}",
    )
    _require(j.batch_timeout_s > 0, "judge.batch_timeout_s", "must be > 0")


def resolved_dtype(cfg: JobConfig) -> str:
    """The dtype actually used: float32 on CPU (bf16 is several times slower without AVX-512)."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "float32" if cfg.cluster.device == "cpu" else "bfloat16"


WEIGHT_SYNC_METHODS = ("auto", "collective", "ipc", "object_store")


def resolve_weight_sync(requested: str, device: str, colocated: bool, fsdp2: bool) -> str:
    """`rollout.weight_sync` made concrete (the engines receive through `vllm_backend` of it).

    auto: engines on other GPUs (or on cpu) -> collective (nccl on cuda, gloo on cpu); engines sharing
    the learner's GPUs -> ipc, which needs every learner rank to hold full tensors on its own GPU, one
    parameter at a time (FSDP2's DTensors do; DeepSpeed ZeRO's gather does not fit vLLM's IPC engine),
    else object_store (NCCL cannot put two ranks of one group on one GPU). object_store is otherwise
    never chosen: it stays for engines that cannot join a collective with the learner (no NCCL/gloo
    route between their nodes, e.g. across clusters or firewalls) and for debugging a transfer.
    """
    key = "rollout.weight_sync"
    _one_of(requested, key, WEIGHT_SYNC_METHODS)
    gpu_shared = device == "cuda" and colocated
    if requested == "auto":
        return ("ipc" if fsdp2 else "object_store") if gpu_shared else "collective"
    _require(
        requested != "ipc" or (device == "cuda" and fsdp2),
        key,
        "ipc (CUDA IPC) needs cluster.device=cuda and learner.backend=fsdp2; use collective or object_store",
    )
    _require(
        requested != "collective" or not gpu_shared,
        key,
        "collective: the engines share the learner's GPUs and NCCL cannot hold two ranks on one GPU; "
        "use ipc (fsdp2) or object_store",
    )
    return requested


def weight_sync_method(cfg: JobConfig) -> str:
    """The job's method; colocated = the rollout shares the learner's bundles (`cluster.colocate`)."""
    from rrm_ray.placement import plan_placement  # Ray-free; imports this module lazily

    colocated = "rollout" in plan_placement(cfg).roles["learner"].peers
    return resolve_weight_sync(
        cfg.rollout.weight_sync, cfg.cluster.device, colocated, cfg.learner.backend == "fsdp2"
    )


def vllm_backend(method: str, device: str) -> str:
    """The method's engine name in vLLM's `WeightTransferEngineFactory` (see actors.weight_transfer)."""
    if method == "collective":
        return "nccl" if device == "cuda" else "gloo"
    return {"ipc": "ipc", "object_store": "rrm_object_store"}[method]


def to_flat_dict(cfg: JobConfig) -> dict[str, Any]:
    """The config as `section.key -> value`, for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", OmegaConf.to_container(OmegaConf.structured(cfg)))
    return out


def to_yaml(cfg: JobConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
