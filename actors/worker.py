"""The base of every actor: node facts for placement reports and a free port for a rank-0 rendezvous."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray


class Worker:
    """Base class of every actor: node facts and a free port for the rank-0 rendezvous."""

    def node_info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "bundle": int(os.environ.get("RRM_RAY_BUNDLE", "-1")),
            "pid": os.getpid(),
        }

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def ping(self) -> bool:
        return True
