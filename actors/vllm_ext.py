"""vLLM worker extension: the completeness check around a weight update.

Loaded by vLLM inside its worker (`LLM(worker_extension_cls="actors.vllm_ext.WeightReceiver")`) and
reached with `llm.collective_rpc(method, args=...)`. Weights arrive through vLLM's weight-transfer
engine of the worker (`actors.weight_transfer`, imported here so our engines are registered before
vLLM creates one at model load); this extension only watches what that engine loads.

On CPU, vLLM packs every linear weight into a oneDNN/SGL kernel handle at load time and drops the
dense tensor; an update would then have nothing to load into, and a handle packed from the old weights
would keep computing with them. Importing this module (vLLM does so before it loads the model, and only
engines that take weights load it) keeps the dense weights beside vLLM's own packed kernels, and
`rrm_finish_sync` re-packs every linear that the update did not already re-pack (vLLM's layerwise
reload re-runs the packing for the layers it loaded; a tied lm_head it never loads), so the engine
computes with the new weights at the packed kernels' speed. GPU engines are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.model_executor.layers import utils
from vllm.platforms import current_platform

import actors.weight_transfer  # noqa: F401  (registers the gloo and object-store engines with vLLM)
from rrm_ray.weight_sync import SyncReceipt, TensorMeta

_vllm_cpu_gemm_dispatch = None  # vLLM's own CPU packing, wrapped below
_sync_generation = 0  # bumped per weight update: layers packed before it hold stale handles


def _pack_keeping_dense(layer: torch.nn.Module, remove_weight: bool = False) -> None:
    """vLLM's CPU kernel packing, with the dense weight kept (a later update loads into it)."""
    _vllm_cpu_gemm_dispatch(layer, remove_weight=False)
    layer._rrm_packed_generation = _sync_generation


def _keep_dense_cpu_weights() -> None:
    global _vllm_cpu_gemm_dispatch

    if current_platform.is_cpu() and _vllm_cpu_gemm_dispatch is None:
        _vllm_cpu_gemm_dispatch = utils.dispatch_cpu_unquantized_gemm
        utils.dispatch_cpu_unquantized_gemm = _pack_keeping_dense


def repack_stale_cpu_kernels(model: torch.nn.Module) -> int:
    """Re-pack every CPU linear whose kernel handle predates this update; how many were."""
    if _vllm_cpu_gemm_dispatch is None:
        return 0
    stale = [
        m
        for m in model.modules()
        if hasattr(m, "cpu_linear") and getattr(m, "_rrm_packed_generation", -1) < _sync_generation
    ]
    for layer in stale:
        _pack_keeping_dense(layer)
    return len(stale)


_keep_dense_cpu_weights()


class WeightReceiver:
    """Mixed into vLLM's worker class; `self.model_runner.get_model()` is the served model (the one its
    weight-transfer engine loads into)."""

    def rrm_begin_sync(self, manifest: list[TensorMeta]) -> None:
        """Record every (name, tensor) the model's `load_weights` gets until `rrm_finish_sync`.

        Every engine (vLLM's nccl/ipc, our gloo/object store) loads through `model.load_weights`, so an
        instance attribute shadowing it sees all of them, whatever the transport."""
        global _sync_generation
        _sync_generation += 1
        model = self.model_runner.get_model()
        receipt = self._rrm_receipt = SyncReceipt(manifest)
        load = type(model).load_weights.__get__(model)

        def recording_load(weights: Iterable[tuple[str, torch.Tensor]]) -> object:
            batch = list(weights)
            receipt.record(batch)
            return load(batch)

        model.load_weights = recording_load

    def rrm_abort_sync(self) -> None:
        """A failed sync: stop recording (the next `rrm_begin_sync` starts afresh)."""
        model = self.model_runner.get_model()
        model.__dict__.pop("load_weights", None)
        self._rrm_receipt = None

    def rrm_finish_sync(self) -> dict[str, int]:
        """Stop recording; raise WeightSyncError unless every manifest entry arrived exactly once.
        Then the CPU kernels the update left packed from the old weights are re-packed."""
        model = self.model_runner.get_model()
        model.__dict__.pop("load_weights", None)
        receipt, self._rrm_receipt = self._rrm_receipt, None
        repack_stale_cpu_kernels(model)  # first: the kernels compute with what the engine now holds
        return receipt.verify()
