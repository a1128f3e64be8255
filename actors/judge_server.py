"""One served judge engine: vLLM's OpenAI-compatible server (`/v1/completions`, `/v1/models`,
`/tokenize`, `/health`) in a detached Ray actor, so it outlives the command that started it and
several jobs share it, and its prefix cache (`rrm-ray serve-judge`, `rrm_ray.clients.served_judge`).

vLLM's own `run_server` installs signal handlers, which only the main thread may do, and a Ray actor's
methods do not run there. So the server is put together as vLLM's launcher puts it together, without
that step: the engine (`AsyncLLM`), the FastAPI app (`build_app`, `init_app_state`) and a uvicorn
server run as a task on this async actor's event loop (uvicorn itself skips signals off the main
thread). Token authentication is on: vLLM's `--api-key` middleware answers 401 to a request on
`/v1/...` without `Authorization: Bearer <key>`.

vLLM is imported inside the methods (the driver imports this module only to start the actor).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray


class JudgeServer:
    """vLLM's OpenAI server for the judge model; `start` returns its URL once it answers."""

    def __init__(self) -> None:
        self.server: Any = None
        self.task: asyncio.Task | None = None
        self.engine: Any = None
        self.url = ""

    async def start(
        self,
        model_path: str,
        served_name: str,
        dtype: str,
        max_model_len: int,
        seed: int,
        device: str,
        api_key: str,
        tensor_parallel_size: int,
        gpu_memory_utilization: float,
        prefix_caching: bool,
        max_num_batched_tokens: int,
    ) -> str:
        """Build the engine and the app, then serve on a port the OS picks; returns its URL,
        http://<node ip>:<port>."""
        import uvicorn
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        argv = [
            "--model", model_path,
            "--served-model-name", served_name,
            "--dtype", dtype,
            "--max-model-len", str(max_model_len),
            "--max-num-batched-tokens", str(max(max_num_batched_tokens, max_model_len)),
            "--seed", str(seed),
            "--api-key", api_key,
            "--host", "0.0.0.0",
            "--port", "0",
            "--enable-prompt-tokens-details",  # usage reports the prefix cache's share of each prompt
            "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if device == "cuda":
            argv += [
                "--tensor-parallel-size", str(tensor_parallel_size),
                "--gpu-memory-utilization", str(gpu_memory_utilization),
            ]  # fmt: skip
        else:
            argv += ["--enforce-eager"]
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        validate_parsed_serve_args(args)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        self.engine = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config, usage_context=UsageContext.OPENAI_API_SERVER, disable_log_stats=True
        )
        tasks = await self.engine.get_supported_tasks()
        app = build_app(args, tasks, self.engine.model_config)
        await init_app_state(self.engine, app.state, args, tasks)
        config = uvicorn.Config(app, host="0.0.0.0", port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():  # it could not bind or start: its error
                self.task.result()
            await asyncio.sleep(0.1)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{ray.util.get_node_ip_address()}:{port}"
        return self.url

    async def info(self) -> dict[str, Any]:
        """Where it serves and from which process (the tests check it outlives its command)."""
        return {
            "url": self.url,
            "pid": os.getpid(),
            "serving": self.task is not None and not self.task.done(),
        }

    async def stop(self) -> None:
        """Stop serving and shut the engine down (its engine-core process too)."""
        if self.server is not None:
            self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait([self.task], timeout=30)
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
