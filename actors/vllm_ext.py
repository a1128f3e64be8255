"""vLLM worker extension: the completeness check around a weight update, and checksums.

Loaded by vLLM inside its worker (`LLM(worker_extension_cls="actors.vllm_ext.WeightReceiver")`) and
reached with `llm.collective_rpc(method, args=...)`. Weights arrive through vLLM's weight-transfer
engine of the worker (`actors.weight_transfer`, imported here so our engines are registered before
vLLM creates one at model load); this extension only watches what that engine loads.

On CPU, vLLM normally repacks every linear weight into a oneDNN/SGL kernel handle at load time and
drops the dense tensor; a later in-place update then never reaches the handle (the engine would keep
generating with the old weights). Importing this module (vLLM does so before it loads the model)
makes CPU linears keep their dense weights and run `torch.nn.functional.linear`, so `load_weights`
updates exactly what the engine computes with.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

import actors.weight_transfer  # noqa: F401  (registers the gloo and object-store engines with vLLM)
from rrm_ray.weight_sync import SyncReceipt, TensorMeta, layer_checksums


def _dense_cpu_linear(layer: torch.nn.Module, remove_weight: bool = False) -> None:
    layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)


def _keep_dense_cpu_weights() -> None:
    from vllm.model_executor.layers import utils
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        utils.dispatch_cpu_unquantized_gemm = _dense_cpu_linear


_keep_dense_cpu_weights()


class WeightReceiver:
    """Mixed into vLLM's worker class; `self.model_runner.get_model()` is the served model (the one its
    weight-transfer engine loads into)."""

    def rrm_begin_sync(self, manifest: list[TensorMeta]) -> None:
        """Record every (name, tensor) the model's `load_weights` gets until `rrm_finish_sync`.

        Every engine (vLLM's nccl/ipc, our gloo/object store) loads through `model.load_weights`, so an
        instance attribute shadowing it sees all of them, whatever the transport."""
        model = self.model_runner.get_model()
        receipt = self._rrm_receipt = SyncReceipt(manifest)
        load = type(model).load_weights.__get__(model)

        def recording_load(weights: Iterable[tuple[str, torch.Tensor]]) -> object:
            batch = list(weights)
            receipt.record(batch)
            return load(batch)

        model.load_weights = recording_load

    def rrm_finish_sync(self) -> dict[str, int]:
        """Stop recording; raise WeightSyncError unless every manifest entry arrived exactly once."""
        self.model_runner.get_model().__dict__.pop("load_weights", None)
        receipt, self._rrm_receipt = self._rrm_receipt, None
        return receipt.verify()

    def rrm_checksums(self, skip_lm_head: bool) -> dict[str, list[float]]:
        return layer_checksums(self.model_runner.model.named_parameters(), skip_lm_head)
