"""The engine's side of adapter-only weight sync (`learner.lora.sync: adapter`).

vLLM 0.32's weight-transfer API has no adapter target, and its `finish_weight_update` drops every
loaded adapter, so a LoRA policy reaches the engines through vLLM's own LoRA path instead: the engine
was started with `enable_lora` (`VLLMEngine(lora_rank=...)`), keeps the base weights it loaded from
`model.path` (the learner never changes them) and, per sync, gets the adapter's tensors:

    learner rank 0 --ray.put(tensors)--> every engine's load_adapter(name, config, tensors, manifest):
        check every tensor of the manifest arrived once, with its shape and dtype (SyncReceipt)
        write them as a PEFT directory <root>/<name> on this node's RAM disk (/dev/shm)
        llm_engine.add_lora(LoRARequest(name, id, path, load_inplace=True))
        from now on every request carries LoRARequest(name, id, path); the previous adapter is
        removed from vLLM and its directory deleted

The tensors travel as one Ray object, so engines on other nodes need no shared filesystem: each writes
its own copy on its own node. `name` (`rrm_ray.lora.version_name`) is new at every sync: vLLM's prefix
cache keys KV blocks on (lora_name, lora_path), so blocks computed under an older adapter are never
served for a newer one. A restarted engine comes back with the base weights from `model.path` and no
adapter; the rollout client sees `weight_transfer_ready()` False, sets the sync up again and sends
the current adapter (the same recovery path as full syncs).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch

from rrm_ray.lora import write_adapter
from rrm_ray.weight_sync import SyncReceipt, TensorMeta, WeightSyncError


def adapter_root(folder: str) -> Path:
    """Where this node keeps the adapters an engine serves: a RAM disk when there is one."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / "rrm-ray-lora" / folder


class AdapterReceiver:
    """Mixed into a `VLLMEngine` actor started with `lora_rank` > 0 (which owns `llm` and
    `lora_request`)."""

    llm: Any
    lora_request: Any
    adapter_dir: Path | None = None
    _adapter_ids = 0  # vLLM's int id of the adapter: one more per load (ids are this engine's own)

    def init_adapter_sync(self) -> None:
        """Take adapters from now on, kept in a folder named after this actor (a restarted engine keeps
        its actor id: it empties the folder, so a dead incarnation's adapter does not stay in the
        node's memory)."""
        root = adapter_root(ray.get_runtime_context().get_actor_id() or "driver")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.adapter_dir = root

    def weight_transfer_ready(self) -> bool:
        return self.adapter_dir is not None or super().weight_transfer_ready()  # type: ignore[misc]

    def load_adapter(
        self, name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], manifest: list[TensorMeta]
    ) -> dict[str, int]:
        """Serve this adapter from now on; returns the completeness report (params, buckets, bytes).
        Raises WeightSyncError (and keeps serving the previous adapter) unless every manifest tensor
        arrived exactly once with its shape and dtype, and vLLM loaded it."""
        from vllm.lora.request import LoRARequest

        if self.adapter_dir is None:
            raise RuntimeError("load_adapter before init_adapter_sync")
        receipt = SyncReceipt(manifest)
        receipt.record(list(tensors.items()))
        report = receipt.verify()
        path = write_adapter(self.adapter_dir / name, tensors, config)
        self._adapter_ids += 1
        engine = self.llm.llm_engine
        if not engine.add_lora(LoRARequest(name, self._adapter_ids, str(path), load_inplace=True)):
            shutil.rmtree(path, ignore_errors=True)
            raise WeightSyncError(f"vLLM did not load the adapter {name} from {path}")
        previous, self.lora_request = self.lora_request, LoRARequest(name, self._adapter_ids, str(path))
        if previous is not None:
            engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        return report

    def served_adapter(self) -> dict[str, Any] | None:
        """The adapter requests carry now (name, id, path), and the ids vLLM holds; None: the base."""
        if self.lora_request is None:
            return None
        r = self.lora_request
        loaded = sorted(self.llm.llm_engine.list_loras())
        return {"name": r.lora_name, "id": r.lora_int_id, "path": r.lora_path, "loaded": loaded}
