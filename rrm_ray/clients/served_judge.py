"""A judge served once for many jobs (`rrm-ray serve-judge`): the config's judge engines as detached
Ray actors running vLLM's OpenAI server (`actors.judge_server.JudgeServer`), with token authentication.

    serve_judge(cfg, name)   a detached placement group of judge.num_engines bundles (the judge's own
                             shape: GPUs and TP per engine), one server per bundle; an API key made here,
                             written to key_file(name) (mode 600); returns the URLs
    stop_judge(name)         the servers stopped, their actors killed, the placement group released

The actors and their placement group are detached (Ray lifetime "detached", named in the
`rrm-ray-judges` namespace): they outlive the command and survive the jobs that use them, until
`stop_judge`. Jobs reach them with `judge.endpoint.url` (`rrm_ray.clients.judge_endpoint`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.engine import engine_env
from actors.judge_server import JudgeServer
from rrm_ray.config import JobConfig, resolved_dtype
from rrm_ray.models import resolve_model_path
from rrm_ray.placement import own_spec

NAMESPACE = "rrm-ray-judges"
KEY_ENV = "RRM_JUDGE_API_KEY"  # the variable the printed instructions and the README name


class ServeError(RuntimeError):
    """The judge could not be served (or stopped), with what to do about it."""


@dataclass
class ServedJudge:
    name: str
    urls: list[str]
    model: str  # the served model name (judge.endpoint.model)
    key_file: Path


def key_file(name: str) -> Path:
    """Where serve-judge writes the API key of judge `name` (`RRM_RAY_HOME`, default ~/.rrm-ray)."""
    return Path(os.environ.get("RRM_RAY_HOME", Path.home() / ".rrm-ray")) / "judges" / f"{name}.key"


def _write_key(path: Path, key: str) -> None:
    """Readable by its owner only: the directory 700, the file 600 from its creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


@contextlib.contextmanager
def _connected(address: str | None) -> Iterator[None]:
    """A driver on a RUNNING cluster (a local Ray started here would die with the command, and the
    judge with it), in the judges' namespace."""
    try:
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as exc:
        raise ServeError(
            f"no running Ray cluster at {address or 'auto'} ({exc}); a served judge must outlive this "
            "command, so it needs a cluster: `ray start --head` here, or --address / cluster.address"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _actor_names(name: str) -> list[str]:
    listed = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"] for a in listed if a["namespace"] == NAMESPACE and a["name"].startswith(f"{name}-engine")
    )


def serve_judge(cfg: JobConfig, name: str, address: str | None = None) -> ServedJudge:
    """Start `judge.num_engines` servers of `judge.model_path` on the cluster; see the module docstring."""
    j, c = cfg.judge, cfg.cluster
    model_path = resolve_model_path(j.model_path)
    served = j.endpoint.model or Path(model_path).name
    key = secrets.token_urlsafe(32)
    with _connected(address or c.address):
        if existing := _actor_names(name):
            raise ServeError(
                f"a judge named {name!r} is served already ({', '.join(existing)}); stop it first "
                f"(rrm-ray serve-judge --stop {name}) or pick another --name"
            )
        spec = own_spec(cfg, "judge")
        pg = placement_group(
            [spec.bundle() for _ in range(j.num_engines)],
            strategy=spec.strategy,
            name=f"rrm-judge-{name}",
            lifetime="detached",
        )
        actors = []
        try:
            ready, _ = ray.wait([pg.ready()], timeout=c.placement_timeout_s)
            if not ready:
                raise ServeError(
                    f"could not reserve {j.num_engines} x {spec.bundle()} for the judge within "
                    f"cluster.placement_timeout_s={c.placement_timeout_s:g}s (judge.num_engines, "
                    "judge.cpus_per_engine, judge.gpus_per_engine)"
                )
            env = {**engine_env(c.device, j.kv_cache_gib, j.threads), **c.env}
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # vLLM's async engine runs its core in a process
            remote = ray.remote(JudgeServer)
            for i in range(j.num_engines):
                actors.append(
                    remote.options(
                        name=f"{name}-engine{i}",
                        namespace=NAMESPACE,
                        lifetime="detached",
                        num_cpus=spec.cpus,
                        num_gpus=spec.gpus,
                        max_restarts=0,  # a restarted server would not serve: jobs see its errors instead
                        runtime_env={"env_vars": env},
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            pg, placement_group_bundle_index=i
                        ),
                    ).remote()
                )
            args = (
                model_path,
                served,
                resolved_dtype(cfg),
                j.max_model_len,
                cfg.trainer.seed,
                c.device,
                key,
                j.tensor_parallel_size,
                j.gpu_memory_utilization,
                j.prefix_caching,
                cfg.rollout.max_num_batched_tokens,
            )
            urls = ray.get([a.start.remote(*args) for a in actors], timeout=c.call_timeout_s)
        except BaseException:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
            raise
        path = key_file(name)
        _write_key(path, key)
    return ServedJudge(name, urls, served, path)


def stop_judge(name: str, address: str | None = None) -> list[str]:
    """Stop judge `name`'s servers, release its placement group, delete its key file; the names of
    the stopped engines (empty: none was served under that name)."""
    with _connected(address):
        names = _actor_names(name)
        for actor_name in names:
            actor = ray.get_actor(actor_name, namespace=NAMESPACE)
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=60)
            ray.kill(actor, no_restart=True)
        with contextlib.suppress(ValueError):  # no such group
            remove_placement_group(ray.util.get_placement_group(f"rrm-judge-{name}"))
    with contextlib.suppress(FileNotFoundError):
        key_file(name).unlink()
    return names
