"""Weight receiver that runs inside vLLM's GPU worker process.

vLLM loads this class by name, ``LLM(worker_extension_cls=
"actors.vllm_worker.WeightReceiverExtension")``, and adds it to the bases of
its ``Worker`` class, so the methods below run in the worker process with
``self`` being the worker (``self.device``, ``self.model_runner``). The actor
reaches them through ``LLM.collective_rpc(name, args=...)``
(actors/engine_vllm.py); this mirrors vLLM's own RLHF example
(examples/offline_inference/rlhf_utils.py, ``WorkerExtension``).

The worker joins the learner's broadcast group (common/weight_sync.py) as one
rank, receives the flat buckets in manifest order, and streams them into the
worker's ``reload_weights`` (vLLM >= 0.30), which takes Hugging Face parameter
names, fuses them into vLLM's stacked qkv / gate_up parameters and re-runs
each layer's post-load processing.

No vllm import here: the module must import (and be unit-tested) without it,
and vLLM only needs the class to be resolvable by its qualified name. The
worker process must be able to import ``actors`` and ``common`` (run the actor
from the repository root or install the package).
"""
from __future__ import annotations

import torch

from common.weight_sync import WeightGroup, WeightGroupSpec


def _reprocess_tied(model: torch.nn.Module) -> None:
    """Re-run post-load processing of layers whose weight is another layer's (a tied lm_head).

    The layerwise reload loads the embedding and leaves the tied lm_head alone
    ("Failed to load weights" in vLLM's log), but the CPU backend packed a
    copy of the lm_head's weight for its GEMM at start-up, which would keep
    the old output projection. Processing the lm_head again repacks it from
    the shared, updated weight; on GPU this processing does nothing."""
    owners: dict[int, torch.nn.Module] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.numel() == 0:
            continue
        key = weight.untyped_storage().data_ptr()
        if key in owners and getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module)
        owners.setdefault(key, module)


def _end_reload(worker) -> None:
    """After a reload that failed part-way (the broadcast was cut off): put every layer back
    on real tensors. The layerwise reload moves all layers to meta tensors first and
    restores each once its weights are all in; without this, the layers left pending are
    skipped by the next reload's set-up as already begun, then processed with the old
    partial data while the new is dropped (vllm/model_executor/model_loader/reload/
    layerwise.py). What they hold afterwards is no policy: the actor holds no valid weights
    until a whole broadcast lands (actors/weights.py), and generates nothing before."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(worker.model_runner.get_model(), worker.model_config)


class WeightReceiverExtension:
    """Mixed into vLLM's Worker. vLLM refuses an extension whose attribute names
    clash with the worker's, so state lives in ``_flowrl_*`` instance attributes
    created on first use (the extension's ``__init__`` is never called)."""

    def join_weight_group(self, spec_dict: dict, manifest: list) -> None:
        """Join the broadcast group as ``spec_dict['rank']``; blocks until the group forms."""
        if getattr(self, "_flowrl_group", None) is not None:
            raise RuntimeError("this vLLM worker has already joined a weight group")
        # NCCL receives straight into this worker's GPU; with gloo WeightGroup
        # receives in host memory and the weight loaders copy to the device.
        self._flowrl_group = WeightGroup(WeightGroupSpec(**spec_dict), device=self.device)
        # The RPC layer may hand tuples back as lists or vice versa: normalise.
        self._flowrl_manifest = [[name, list(shape), dtype] for name, shape, dtype in manifest]

    def receive_weights(self) -> int:
        """Take part in one broadcast and load every tensor; returns bytes received.

        ``reload_weights`` (vLLM's in-place layerwise reload) runs each
        layer's checkpoint-format loaders and then its weight post-processing
        again, so backends that repack weights after loading (the CPU
        backend's linear layers) get kernel-format weights, not HF tensors
        copied into repacked parameters. The receive stream is consumed lazily
        inside it: at most a bucket or two is alive at once."""
        group = getattr(self, "_flowrl_group", None)
        if group is None:
            raise RuntimeError("receive_weights called before join_weight_group")
        received = 0

        def stream():
            nonlocal received
            for name, tensor in group.receive(self._flowrl_manifest):
                received += tensor.numel() * tensor.element_size()
                yield name, tensor

        try:
            self.reload_weights(weights_iterator=stream(), is_checkpoint_format=True)
        except BaseException:
            _end_reload(self)
            raise
        _reprocess_tied(self.model_runner.model)
        if received != sum(torch.Size(shape).numel() * getattr(torch, dt).itemsize
                           for _, shape, dt in self._flowrl_manifest):
            raise RuntimeError(f"vLLM's loader consumed {received} bytes of the broadcast, not all of it")
        if self.device.type == "cuda":
            # The loaders' copies are asynchronous; the next forward must see the new weights.
            torch.cuda.synchronize(self.device)
        return received

    def close_weight_group(self) -> None:
        group = getattr(self, "_flowrl_group", None)
        if group is not None:
            group.close()
        self._flowrl_group = None
