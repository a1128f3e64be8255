"""vLLM worker extension: receives learner weights in buckets and reports checksums.

Loaded by vLLM inside its worker (`LLM(worker_extension_cls="actors.vllm_ext.WeightReceiver")`) and
reached with `llm.collective_rpc(method, args=...)`, so weights update without restarting the engine.
"""

from __future__ import annotations

import torch

from rrm_ray.weight_sync import SyncReceipt, TensorMeta, layer_checksums


class WeightReceiver:
    """Mixed into vLLM's worker class; `self.model_runner.model` is the served model."""

    def rrm_begin_sync(self, manifest: list[TensorMeta]) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self._rrm_receipt = SyncReceipt(manifest)
        # Layerwise reload: a layer is re-processed into kernel format once all its tensors arrived,
        # so buckets may split a layer anywhere.
        initialize_layerwise_reload(self.model_runner.model)

    def rrm_load_bucket(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        self._rrm_receipt.record(bucket)
        # load_weights maps HF names onto vLLM's fused parameters (qkv_proj, gate_up_proj).
        self.model_runner.model.load_weights(iter(bucket))

    def rrm_finish_sync(self) -> dict[str, int]:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model_runner.model, self.model_runner.vllm_config.model_config)
        receipt, self._rrm_receipt = self._rrm_receipt, None
        return receipt.verify()

    def rrm_checksums(self, skip_lm_head: bool) -> dict[str, list[float]]:
        return layer_checksums(self.model_runner.model.named_parameters(), skip_lm_head)
