"""vLLM worker extension: receives learner weights in buckets and reports checksums.

Loaded by vLLM inside its worker (`LLM(worker_extension_cls="actors.vllm_ext.WeightReceiver")`) and
reached with `llm.collective_rpc(method, args=...)`, so weights update without restarting the engine.

On CPU, vLLM normally repacks every linear weight into a oneDNN/SGL kernel handle at load time and
drops the dense tensor; a later in-place update then never reaches the handle (the engine would keep
generating with the old weights). Importing this module (vLLM does so before it loads the model)
makes CPU linears keep their dense weights and run `torch.nn.functional.linear`, so `load_weights`
updates exactly what the engine computes with.
"""

from __future__ import annotations

import torch

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
    """Mixed into vLLM's worker class; `self.model_runner.model` is the served model."""

    def rrm_begin_sync(self, manifest: list[TensorMeta]) -> None:
        self._rrm_receipt = SyncReceipt(manifest)

    def rrm_load_bucket(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        self._rrm_receipt.record(bucket)
        # load_weights maps HF names onto vLLM's fused parameters (qkv_proj, gate_up_proj).
        self.model_runner.model.load_weights(iter(bucket))

    def rrm_finish_sync(self) -> dict[str, int]:
        receipt, self._rrm_receipt = self._rrm_receipt, None
        return receipt.verify()

    def rrm_checksums(self, skip_lm_head: bool) -> dict[str, list[float]]:
        return layer_checksums(self.model_runner.model.named_parameters(), skip_lm_head)
