"""Weight broadcast from learner rank 0 to the actors (DESIGN.md sections 3, 7).

The group is made only for the learner's rank 0 (rank 0 here) and the actors
(ranks 1..N), over its own TCPStore rendezvous, so it never touches the
learner's training group. NCCL when CUDA is present, gloo otherwise: the same
code either way. Tensors travel in flat buckets (one collective per bucket)
in the order of a manifest both sides agree on: [[name, shape, dtype], ...].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class WeightGroupSpec:
    """Where and how to join the broadcast group; sent to actors in ``Welcome``."""

    host: str
    port: int
    world_size: int
    rank: int
    backend: str
    timeout_s: float = 600.0

    def as_dict(self) -> dict:
        return asdict(self)

    def for_rank(self, rank: int) -> "WeightGroupSpec":
        return WeightGroupSpec(self.host, self.port, self.world_size, rank, self.backend, self.timeout_s)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def make_manifest(named: Iterable[tuple[str, torch.Tensor]]) -> list:
    return [[name, list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in named]


def _buckets(manifest: list, bucket_bytes: int) -> list[list[int]]:
    """Consecutive manifest indices grouped by dtype up to ``bucket_bytes`` each."""
    out: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, shape, dt) in enumerate(manifest):
        nbytes = torch.Size(shape).numel() * getattr(torch, dt).itemsize
        if not out or dt != dtype or size + nbytes > bucket_bytes:
            out.append([])
            size, dtype = 0, dt
        out[-1].append(i)
        size += nbytes
    return out


class WeightGroup:
    """One member of the broadcast group. Construction blocks until all ranks join."""

    def __init__(self, spec: WeightGroupSpec, device: torch.device | str = "cpu"):
        self.spec, self.device = spec, torch.device(device)
        timeout = timedelta(seconds=spec.timeout_s)
        store = dist.TCPStore(spec.host, spec.port, spec.world_size, is_master=spec.rank == 0,
                              timeout=timeout, wait_for_workers=False)
        store = dist.PrefixStore("flowrl-weights", store)
        if spec.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(store, spec.rank, spec.world_size, opts)
        elif spec.backend == "gloo":
            self.pg = dist.ProcessGroupGloo(store, spec.rank, spec.world_size, timeout)
        else:
            raise ValueError(f"weight_group.backend must be 'nccl' or 'gloo', got {spec.backend!r}")
        self._store = store  # keeps the master's server alive for the group's lifetime

    def broadcast(self, named: list[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
        """Root side: send every tensor in manifest order; returns bytes sent."""
        manifest = make_manifest(named)
        sent = 0
        for idx in _buckets(manifest, bucket_bytes):
            flat = torch.cat([named[i][1].detach().reshape(-1).to(self.device) for i in idx])
            self.pg.broadcast(flat, 0).wait()
            sent += flat.numel() * flat.element_size()
        return sent

    def receive(self, manifest: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[tuple[str, torch.Tensor]]:
        """Receiver side: yields (name, tensor) bucket by bucket, as views of a flat buffer."""
        for idx in _buckets(manifest, bucket_bytes):
            shapes = [torch.Size(manifest[i][1]) for i in idx]
            flat = torch.empty(sum(s.numel() for s in shapes), dtype=getattr(torch, manifest[idx[0]][2]),
                               device=self.device)
            self.pg.broadcast(flat, 0).wait()
            for i, part in zip(idx, torch.split(flat, [s.numel() for s in shapes])):
                yield manifest[i][0], part.view(shapes[idx.index(i)])

    def close(self) -> None:
        shutdown = getattr(self.pg, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.pg = None
