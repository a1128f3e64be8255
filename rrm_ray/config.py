"""Typed job configuration: the dataclass schemas, and the YAML + dotlist merge.

Every knob a user may turn lives here and in `configs/*.yaml`. Loading goes through
`OmegaConf.structured` in struct mode, so an unknown key or a value of the wrong type fails with the
key's full name before Ray is touched; `rrm_ray.validation` then checks the values against each other
and against the declared cluster shape, and every message says which key is wrong and what is allowed.
Longer than most modules on purpose: every knob is declared here with the comment that documents it
(configs/reference.yaml points here), so the whole schema reads in one place.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
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
    # What a local Ray (address unset) declares. None: on cpu, 8 logical CPUs (the roles take fractions
    # of them) and no GPUs; on cuda, what Ray detects on this machine (all its GPUs and cores), so a GPU
    # profile runs on one machine as written (rrm_ray.placement.local_resources).
    local_num_cpus: int | None = None
    local_num_gpus: int | None = None
    # Declared cluster shape, checked by validate() so a profile fails before submission.
    # 0 means unknown (checked against the live cluster after connecting instead).
    num_nodes: int = 0
    gpus_per_node: int = 0
    placement_timeout_s: float = 120.0  # waiting longer than this for resources is an error
    # Every remote call waits at most this long; an actor that does not answer in time is treated as
    # hung: killed and restarted like a dead one (counted in faults/<role>_hangs). Must outlive
    # judge.batch_timeout_s and the reward rule's worst case for one batch (validated).
    call_timeout_s: float = 3600.0
    # A dead rollout/judge/reward actor is restarted and its call retried this many times (per actor);
    # the learner is rebuilt from a checkpoint at most this many times (rrm_ray/recovery.py).
    max_actor_restarts: int = 2
    # Extra env vars for every actor. Their values are treated as secrets (an HF_TOKEN, say): shown as
    # "***" in MLflow params, saved configs and the console; `${oc.env:NAME}` reads one from the
    # driver's environment instead of writing it in a file.
    env: dict[str, str] = field(default_factory=dict)
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
    # Per-request sampling seeds (rrm_ray.seeds): always = every sample's random stream reproducible
    # (a resumed run draws the same samples); never = vLLM's fastest sampler (a seeded request sends
    # vLLM's GPU sampler from FlashInfer to its per-request PyTorch path, sampler/ops/topk_topp_sampler.py);
    # auto = always on cpu (the tests compare runs sample by sample), never on cuda.
    seed_requests: str = "auto"
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
class LoRAConfig:
    """LoRA adapters instead of full training (`peft`, wrapped before sharding): the base model stays
    frozen in model.dtype, only the adapters (fp32 masters) train, and the KL/DPO reference is the base
    with the adapter switched off. README "LoRA" says what each sync mode costs."""

    rank: int = 0  # 0: off (full training); vLLM serves ranks up to 512
    alpha: float = 16.0  # scale alpha / rank on the adapter's output
    dropout: float = 0.0
    # Linear layers of every decoder layer that get an adapter (their names in the HF model)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # adapter: each sync sends only the adapter, which the engines serve through vLLM's LoRA support
    # (a new adapter name and path per policy version) | merged: the learner sends W + alpha/r * B A,
    # rounded to model.dtype, through the full weight sync, for engines that cannot serve LoRA
    sync: str = "adapter"


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
    # > 0: instead, each mini-batch's sequences are sorted by length and micro-batches filled up to this
    # many PADDED tokens (sequences x the longest); every rank runs as many micro-batches as the busiest
    # (rrm_ray.batch.budget_micro_batches). At least model.max_model_len. 0: micro_batch_size sequences.
    max_tokens_per_microbatch: int = 0
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
    lora: LoRAConfig = field(default_factory=LoRAConfig)


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
    # samples are generated, so scoring and judging overlap generation (rrm_ray.clients.streamed_batch);
    # never: the whole batch is generated, then scored. auto: streams, unless the rollout and the judge share
    # bundles (cluster.colocate: they take turns) or judge training uses budget forcing (two-phase
    # generation); `always` with either is a config error.
    streaming: str = "auto"


@dataclass
class JudgeEndpointConfig:
    """A judge served once for many jobs (`rrm-ray serve-judge`, or any OpenAI-compatible
    `/v1/completions` server such as `vllm serve`): the job starts no judge engines and reserves no
    judge bundles; its judge service runs in the driver and sends token-id prompts over HTTP."""

    # http://host:port of the server (several, comma-separated: one per served engine, as serve-judge
    # prints them; each query's pairs go to one of them, so its prompt head stays in one prefix cache).
    # null: the job starts its own judge engines.
    url: str | None = None
    model: str | None = None  # the served model name; null: the server's only model
    # The NAME of the environment variable that holds the API key (e.g. RRM_JUDGE_API_KEY), read only
    # where the HTTP client is built, so the key itself never reaches a config dump, MLflow or a log.
    # null: no Authorization header.
    api_key_env: str | None = None
    max_concurrency: int = 64  # HTTP requests in flight at once, per server
    timeout_s: float = 600.0  # one request; a slower answer is an endpoint error (retried)
    # A failed request (connection refused, HTTP 5xx, time-out) is sent again this many times, after
    # 1, 2, 4, ... s (capped at 30 s), counted as judge/endpoint_errors; then the run fails naming the URL.
    # 4xx answers (a wrong key, a bad request) are not retried.
    retries: int = 3


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
    # auto (rrm_release in rrm mode, mtbench in direct mode) | rrm_release: the released RRM-7B /
    # RRM-32B's own prompt, byte for byte | mtbench: this project's MT-Bench-style layout (formerly
    # "full") | compact: short, with a reply example (small judges); rrm_ray.judge.prompts
    prompt_style: str = "auto"
    # release: the released RRMs' evaluation parser (exact "Assistant 1"/"Assistant 2" in the last
    # \boxed before a second </think>) | lenient: last complete box, case and \text{} ignored. One rule
    # for evaluation, tournaments, best-of-n and the judge-training reward (rrm_ray.judge.verdict).
    verdict_rule: str = "release"
    # both_orders: votes alternate the presentation order, the first from a coin seeded by trainer.seed
    # (1 vote: that one order) | seeded_coin: every vote in the seeded coin's order. The release's
    # protocol is one presentation per item from a seeded coin, one sample: either value with votes=1.
    presentation: str = "both_orders"
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
    # A pair whose prompt exceeds max_prompt_tokens: error (the call fails naming the pair; the release
    # never cuts) | skip (not judged: undecided, counted) | truncate (the documented cut of
    # rrm_ray.judge.prompts, counted). Both counts are judge/over_length_pairs in MLflow and the console.
    over_length: str = "error"
    votes: int = 1  # sampled judgments per pair (majority); judge.presentation says in which orders
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
    endpoint: JudgeEndpointConfig = field(default_factory=JudgeEndpointConfig)


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
    """lm-eval multiple-choice accuracy of the policy on local MMLU-Pro / GPQA files,
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
    # SIGTERM / SIGINT (`rrm-ray stop`, Ctrl-C, Kubernetes, Slurm): the step in flight may finish within
    # this many seconds, then a checkpoint is written, MLflow is flushed and the run marked KILLED; past
    # it the step is abandoned (the last checkpoint stays) and the run closed at once. Kubernetes and
    # Slurm send SIGKILL 30 s after SIGTERM by default; `rrm-ray submit` gives Ray's stop that long plus
    # 120 s for the checkpoint (RAY_JOB_STOP_WAIT_TIME_S). A second signal stops at once.
    stop_grace_s: float = 25.0
    downstream_eval: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///runs/mlflow.db"
    experiment: str = "rrm-ray"  # created tagged as a model-training experiment (mlflow.experimentKind)
    run_name: str | None = None  # None: "<job>-<model dir>-<YYYYMMDD-HHMM>", e.g. grpo-SmolLM2-135M-...
    enabled: bool = True
    http_retries: int = 1  # MLflow HTTP retries before a call is buffered locally (server down)
    http_timeout_s: float = 10.0
    # Training jobs: false: MLflow down at start is an outage like any other (calls are kept in the run's
    # journal, <checkpoint.dir>/<run>/mlflow_buffer.jsonl, and the run is created once it is back);
    # true: the job fails at start, naming the URI.
    required: bool = False
    buffer_max_mb: float = 256.0  # the journal's size cap during an outage; beyond it the job fails
    # MLflow system metrics of the driver's machine (CPU, memory, disk, network; GPU with nvidia-ml-py)
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    # The final policy as an MLflow logged model, the run's output: none | path (records the HF
    # directory's path, no copy) | artifacts (also copies the directory into MLflow's artifact store)
    log_model: str = "path"
    registered_model: str | None = None  # a name: the final policy also becomes a version of it


@dataclass
class CheckpointConfig:
    # Each run writes into its own folder here, <dir>/<run id>/ (step_N checkpoints, final/, figures/,
    # the MLflow journal): a second run in the same dir starts its own series and never prunes or
    # resumes another's. resume=auto continues the run that completed a checkpoint last.
    dir: str = "runs/checkpoints"
    every: int = 0  # 0: no intermediate checkpoints (SIGTERM still writes one)
    keep_last: int = 2  # complete checkpoints of this run kept (>= 1)
    # Each file's CRC-32 in the manifest (sizes are always there), checked at load: costs one read of the
    # checkpoint at save and at load (about 2 GB/s); false: sizes only
    checksums: bool = True
    save_final: bool = True  # write the final policy in HF format (<dir>/<run id>/final) and log it to MLflow


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
    # "auto": the latest complete checkpoint in checkpoint.dir (of the run that wrote one last), or a
    # <run>/step_N path; the run (its folder, its MLflow run) is continued
    resume: str | None = None


def merge_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Merge schema defaults, a YAML file and `key=value` overrides (not yet validated: see
    `rrm_ray.validation.load_config`).

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


# Values that earlier versions documented, and what says the same now (checked by rrm_ray.validation).
REPLACED_VALUES = {
    ("judge.prompt_style", "full"): "renamed to mtbench (this project's MT-Bench-style layout); the "
    "released RRMs' own prompt is rrm_release, which auto picks in judge.mode=rrm",
    ("judge.over_length", "reject"): "renamed: skip (the pair is not judged, undecided and counted) or "
    "error (the run fails naming the pair)",
}

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


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def one_of(value: Any, key: str, allowed: tuple[Any, ...]) -> None:
    require(value in allowed, key, f"got {value!r}, allowed: {', '.join(map(str, allowed))}")


def resolved_dtype(cfg: JobConfig) -> str:
    """The dtype actually used: float32 on CPU (bf16 is several times slower without AVX-512)."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "float32" if cfg.cluster.device == "cpu" else "bfloat16"


# -- secrets ---------------------------------------------------------------------------------------------
REDACTED = "***"
# A key whose last word is one of these holds a secret value (HF_TOKEN, api_key, db_password, ...); one
# that ends in _env, _file, _path, _dir or _name holds the NAME of a variable or a file, not the secret.
_SECRET_WORDS = {"token", "secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("auth", "key")}
_NAME_WORDS = {"env", "file", "path", "dir", "name", "var"}
SECRET_SECTIONS = ("cluster.env.",)  # every value under these is a secret


def is_secret_key(key: str) -> bool:
    """Whether a config key (dotted or not) names a secret value, judged by its last component."""
    words = [w for w in re.split(r"[^a-z0-9]+", key.rsplit(".", 1)[-1].lower()) if w]
    if not words or words[-1] in _NAME_WORDS:
        return False
    pairs = set(itertools.pairwise(words))
    return bool(_SECRET_WORDS & set(words) or _SECRET_PAIRS & pairs)


def is_secret(key: str) -> bool:
    """Whether the flattened config key `key` holds a value that must not be shown."""
    return key.startswith(SECRET_SECTIONS) or is_secret_key(key)


def secret_values(cfg: JobConfig) -> list[str]:
    """The config's secret values (non-empty strings), longest first: what `redact_text` hides."""
    found = {str(v) for k, v in to_flat_dict(cfg, redact=False).items() if is_secret(k) and v}
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each secret value replaced by `***`."""
    for secret in secrets:
        if len(secret) >= 4:  # a 1-3 character "secret" would blank out ordinary text
            text = text.replace(secret, REDACTED)
    return text


def to_flat_dict(cfg: JobConfig, redact: bool = True) -> dict[str, Any]:
    """The config as `section.key -> value`, for MLflow params; secret values are `***` unless
    `redact=False`."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = REDACTED if redact and node not in (None, "") and is_secret(prefix) else node

    walk("", OmegaConf.to_container(OmegaConf.structured(cfg)))
    return out


def to_yaml(cfg: JobConfig, redact: bool = True) -> str:
    """The config as YAML (what a checkpoint and an exported model keep); secret values are `***`
    unless `redact=False`."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg))

    def walk(prefix: str, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items()}
        return REDACTED if redact and node not in (None, "") and is_secret(prefix) else node

    return OmegaConf.to_yaml(OmegaConf.create(walk("", container)))
