"""The rollout role's client: the vLLM engines that sample the policy, and the weights they hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.engine import engine_env
from actors.rollout import RolloutWorker
from rrm_ray.clients.group import ActorGroup
from rrm_ray.clients.restarts import Restarts
from rrm_ray.config import JobConfig, resolved_dtype
from rrm_ray.seeds import seeds_requests
from rrm_ray.types import Completion
from rrm_ray.weight_sync import LORA_ADAPTER, vllm_backend, weight_sync_method

if TYPE_CHECKING:
    from rrm_ray.clients.colocation import Colocation
    from rrm_ray.clients.learner import LearnerClient
    from rrm_ray.clients.roles import Placement


def engine_spec(
    cfg: JobConfig, model_path: str, enable_sleep_mode: bool = False, takes_weights: bool = True
) -> dict[str, Any]:
    """A rollout engine's `init_args`, `init_kwargs` and `env` as the driver starts it (for
    `ActorGroup`/`place`): benchmarks that measure the rollout actor build it from the same place.
    `takes_weights` False: an engine that samples the weights it loaded (best-of-n) gets no
    weight-transfer backend, so none of the receiver's cost (`actors.engine.VLLMEngine`)."""
    c, r = cfg.cluster, cfg.rollout
    backend = vllm_backend(weight_sync_method(cfg), c.device) if takes_weights else None
    # A LoRA policy's adapter arrives through vLLM's LoRA loading, not a weight-transfer engine
    lora_rank = cfg.learner.lora.rank if backend == LORA_ADAPTER else 0
    if lora_rank:
        backend = None
    return {
        "init_args": (model_path, resolved_dtype(cfg), cfg.model.max_model_len, cfg.trainer.seed, c.device),
        "init_kwargs": {
            "gpu_memory_utilization": r.gpu_memory_utilization,
            "max_num_batched_tokens": r.max_num_batched_tokens,
            "tensor_parallel_size": r.tensor_parallel_size,
            "weight_transfer_backend": backend,
            "enable_sleep_mode": enable_sleep_mode,
            "lora_rank": lora_rank,
        },
        "env": {**engine_env(c.device, r.kv_cache_gib, r.threads, r.tensor_parallel_size), **c.env},
    }


class RolloutClient:
    """`rollout.num_engines` engines: prompts split over them, completions gathered prompt-major.

    `version` is the policy version the engines hold (`rrm_ray.pipeline`): the learner's at their last
    weight sync. Weights come from `source`, the learner (None: the engines keep the weights they
    loaded, as when the rollout samples without training). A dead engine is restarted by Ray and its
    batch retried, after the learner's weights were synced to it again (it comes back with the
    initial ones).
    """

    def __init__(
        self,
        group: ActorGroup,
        cfg: JobConfig,
        share: Colocation | None,
        restarts: Restarts,
        think_budget: int = 0,
    ) -> None:
        self.group, self.cfg, self.share, self.restarts = group, cfg, share, restarts
        self.think_budget = think_budget  # judge training with budget forcing (rrm_ray.judge.budget)
        self.source: LearnerClient | None = None
        self.version = 0

    @classmethod
    def start(
        cls,
        cfg: JobConfig,
        model_path: str,
        place: Placement,
        share: Colocation | None,
        restarts: Restarts,
        think_budget: int = 0,
        takes_weights: bool = True,
    ) -> RolloutClient:
        """The engines on the rollout's bundles (`place`); engines that share them sleep at once.
        `takes_weights` False: engines never `connect`ed to a learner (no weight-transfer backend)."""
        c = cfg.cluster
        group = place(
            "rollout",
            RolloutWorker,
            **engine_spec(cfg, model_path, place.shared("rollout"), takes_weights),
            max_restarts=c.max_actor_restarts,
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
        )
        if share is not None:
            share.register("rollout", group)
        return cls(group, cfg, share, restarts, think_budget)

    def __len__(self) -> int:
        return len(self.group)

    # -- sampling ----------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None
    ) -> list[Completion]:
        """n samples per prompt (flat, prompt-major); restarted and retried if an engine dies."""
        seed = self._request_seed(seed)
        resync = self.sync_weights if self.source is not None else None
        return self.restarts.retry(
            self.group, lambda _: self._generate_once(prompts, n, temperature, max_tokens, seed), resync
        )

    def _generate_once(
        self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None
    ) -> list[Completion]:
        """Contiguous chunks of the prompts, one per engine; `seed` streams follow the global index."""
        if self.share is not None:
            self.share.before("rollout")
        engines = len(self.group)
        chunk = -(-len(prompts) // engines)
        refs = []
        for e in range(engines):
            part = prompts[e * chunk : (e + 1) * chunk]
            if part:
                refs.append(
                    self.group.actors[e].generate.remote(
                        part,
                        n,
                        temperature,
                        self.cfg.rollout.top_p,
                        max_tokens,
                        seed,
                        e * chunk,
                        self.think_budget,
                    )
                )
        return [c for out in self.group.get(refs, "generate") for c in out]

    def _request_seed(self, seed: int | None) -> int | None:
        """`seed`, or None where `rollout.seed_requests` sends requests unseeded (`rrm_ray.seeds`)."""
        return seed if seeds_requests(self.cfg.rollout.seed_requests, self.cfg.cluster.device) else None

    def stream(
        self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None
    ) -> list[Any]:
        """`generate` as one Ray streaming generator per engine, each yielding a prompt's n samples as
        soon as they are done (`rrm_ray.clients.streamed_batch`, which also retries it as a whole)."""
        if self.share is not None:
            self.share.before("rollout")
        seed = self._request_seed(seed)
        chunk = -(-len(prompts) // len(self.group))
        streams = []
        for e, actor in enumerate(self.group.actors):
            part = prompts[e * chunk : (e + 1) * chunk]
            if part:
                call = actor.generate_stream.options(num_returns="streaming")
                streams.append(
                    call.remote(part, n, temperature, self.cfg.rollout.top_p, max_tokens, seed, e * chunk)
                )
        return streams

    # -- weights in: vLLM's weight-transfer protocol, sent by the learner ----------------------------------
    def connect(self, source: LearnerClient) -> None:
        """Take weights from `source` from now on, and set the transfer up (again, after a rebuild)."""
        self.source = source
        if self.share is not None:
            self.share.before("weight_transfer")
        self.init_weight_transfer()

    def init_weight_transfer(self) -> None:
        """Every learner rank builds its trainer engine; rank 0 opens the transfer with every engine."""
        assert self.source is not None, "connect() the learner first"
        self.source.init_weight_transfer(self.group.actors)

    def sync_weights(self, retried: bool = False) -> dict[str, int]:
        """The learner's weights into every engine (each verifies completeness); their report. An engine
        that Ray restarted lost its end of the transfer (and a collective group that held it is dead
        for all), so the transfer is set up again first. `retried`: a sync that an engine's death
        interrupts is retried once Ray restarted it (the restart and the resync paths sync unretried)."""
        if retried:
            return self.restarts.retry(self.group, lambda _: self.sync_weights())
        assert self.source is not None, "connect() the learner first"
        if self.share is not None:
            self.share.before("weight_sync")  # the engines that take weights are awake
        if not (all(self.group.call_all("weight_transfer_ready")) and self.source.transfer_ready()):
            self.init_weight_transfer()  # after a restart of either side, or a sync that failed
        report = self.source.send_weights()
        self.version = self.source.version
        return report
