"""Weight receiver that runs inside vLLM's GPU worker process.

vLLM loads this class by name, ``LLM(worker_extension_cls=
"actors.vllm_worker.WeightReceiverExtension")``, and adds it to the bases of
its ``Worker`` class, so the methods below run in the worker process with
``self`` being the worker (``self.device``, ``self.model_runner``). The actor
reaches them through ``LLM.collective_rpc(name, args=...)``
(actors/engine_vllm.py); this mirrors vLLM's own RLHF example
(examples/offline_inference/rlhf_utils.py, ``WorkerExtension``).

The worker joins the learner's broadcast group (common/weight_sync.py) as one
rank, receives the flat buckets in manifest order, and hands each bucket to
``model.load_weights``, which takes Hugging Face parameter names and does the
fusing into vLLM's stacked qkv / gate_up parameters itself.

No vllm import here: the module must import (and be unit-tested) without it,
and vLLM only needs the class to be resolvable by its qualified name. The
worker process must be able to import ``actors`` and ``common`` (run the actor
from the repository root or install the package).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from common.weight_sync import WeightGroup, WeightGroupSpec


def by_bucket(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Regroup ``WeightGroup.receive``'s stream into its buckets.

    ``receive`` yields every tensor of a bucket as a view of that bucket's
    flat buffer, so tensors sharing one storage form one bucket. Loading a
    bucket per ``load_weights`` call keeps the Python overhead per call low
    while only one or two buckets are ever alive on the GPU.
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    storage = None
    for name, tensor in named:
        ptr = tensor.untyped_storage().data_ptr()
        if bucket and ptr != storage:
            yield bucket
            bucket = []
        bucket.append((name, tensor))
        storage = ptr
    if bucket:
        yield bucket


class WeightReceiverExtension:
    """Mixed into vLLM's Worker. vLLM refuses an extension whose attribute names
    clash with the worker's, so state lives in ``_flowrl_*`` instance attributes
    created on first use (the extension's ``__init__`` is never called)."""

    def join_weight_group(self, spec_dict: dict, manifest: list) -> None:
        """Join the broadcast group as ``spec_dict['rank']``; blocks until the group forms."""
        if getattr(self, "_flowrl_group", None) is not None:
            raise RuntimeError("this vLLM worker has already joined a weight group")
        spec = WeightGroupSpec(**spec_dict)
        # NCCL receives straight into GPU memory; a gloo group (learner without
        # CUDA) receives on the CPU and load_weights copies to the GPU.
        device = self.device if spec.backend == "nccl" else torch.device("cpu")
        self._flowrl_group = WeightGroup(spec, device=device)
        # The RPC layer may hand tuples back as lists or vice versa: normalise.
        self._flowrl_manifest = [[name, list(shape), dtype] for name, shape, dtype in manifest]

    def receive_weights(self) -> int:
        """Take part in one broadcast and load every tensor; returns bytes received."""
        group = getattr(self, "_flowrl_group", None)
        if group is None:
            raise RuntimeError("receive_weights called before join_weight_group")
        model = self.model_runner.model
        received = 0
        for bucket in by_bucket(group.receive(self._flowrl_manifest)):
            # HF names in, vLLM's weight loaders copy (and cast) into the live
            # parameters, including the shards of fused qkv / gate_up. This is
            # the path of vLLM's rlhf_utils.WorkerExtension; quantised models
            # would also need vLLM's layerwise reload (not supported here).
            model.load_weights(weights=bucket)
            received += sum(t.numel() * t.element_size() for _, t in bucket)
        if group.device.type == "cuda":
            # NCCL and the copies are asynchronous; the next forward pass must
            # see the new weights (vLLM synchronises the same way after updates).
            torch.cuda.synchronize(group.device)
        return received

    def close_weight_group(self) -> None:
        group = getattr(self, "_flowrl_group", None)
        if group is not None:
            group.close()
        self._flowrl_group = None
