"""Weight broadcast from learner rank 0 to the actors (DESIGN.md sections 3, 7).

The group is made only for the learner's rank 0 (rank 0 here) and the actors
(ranks 1..N), over its own TCPStore rendezvous, so it never touches the
learner's training group. Tensors travel in flat buckets (one collective per
bucket) in the order of a manifest both sides agree on: [[name, shape, dtype]].

One code path for both backends; what differs on GPU is handled here:
- The backend is chosen by rank 0 and published in the rendezvous store, so a
  spec with ``backend="auto"`` is resolved once for every member: NCCL cannot
  put two ranks on one GPU, so rank 0 picks gloo when a member shares its GPU
  (``resolve_backend``).
- NCCL communicators are created lazily by the first collective; the
  constructor runs a one-element broadcast so that it returns only when every
  member has joined, as it does for gloo.
- ``wait()`` on an NCCL work only orders streams; the group is built with
  blocking wait, so ``wait()`` blocks the host until the transfer is done and
  raises on timeout instead of the watchdog aborting the process.
- Rank 0 broadcasts on its own CUDA stream, after an event recorded where the
  snapshot was taken, and synchronises after the last bucket, so the time it
  reports is the transfer and no snapshot outlives its broadcast.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024
BACKENDS = ("auto", "nccl", "gloo")
_BACKEND_KEY = "backend"


@dataclass(frozen=True)
class WeightGroupSpec:
    """Where and how to join the broadcast group; sent to actors in ``Welcome``."""

    host: str
    port: int
    world_size: int
    rank: int
    backend: str
    """"nccl", "gloo" or "auto" (rank 0 decides and publishes it in the rendezvous store)."""
    timeout_s: float = 600.0
    """Bound on forming the group and on each broadcast: a member that is not there in
    time fails it (and is then evicted by the learner), nobody waits longer."""
    generation: int = 0
    """Which formation of the group this is; the group is formed anew whenever its
    membership changes (Rendezvous), under its own keys in the one store."""
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    """Bytes a broadcast moves per collective; every member cuts the manifest alike, so
    it is the group's, not each end's."""

    def as_dict(self) -> dict:
        return asdict(self)

    def for_rank(self, rank: int) -> "WeightGroupSpec":
        return replace(self, rank=rank)


def gpu_uuid(device: torch.device | str | None) -> str | None:
    """The physical identity of a CUDA device (stable across CUDA_VISIBLE_DEVICES); None for CPU."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


def resolve_backend(setting: str, root_gpu: str | None, member_gpus: list[str | None]) -> str:
    """The backend rank 0 publishes for ``setting`` ("auto", "nccl" or "gloo"), given the
    GPU identity of rank 0 and of every other member (None: on CPU)."""
    if setting not in BACKENDS:
        raise ValueError(f"weight backend must be one of {BACKENDS}, got {setting!r}")
    gpus = [root_gpu] + member_gpus
    # NCCL puts one rank on a GPU ("Duplicate GPU detected"): an actor on the learner's GPU,
    # or two actors on one
    shared = len(set(g for g in gpus if g is not None)) < sum(g is not None for g in gpus)
    if setting == "auto":
        return "nccl" if None not in gpus and not shared else "gloo"
    if setting == "nccl" and None in gpus:
        raise ValueError("weight backend 'nccl' needs every member on a GPU; use 'auto' or 'gloo'")
    if setting == "nccl" and shared:
        raise ValueError("two members of the weight group share a GPU, and NCCL cannot put two ranks "
                         "on one GPU; use weight backend 'auto' or 'gloo'")
    return setting


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


@contextmanager
def _nccl_env():
    """Blocking wait (wait() blocks and raises on timeout) and no process teardown on
    error, for this group only: ProcessGroupNCCL reads both when it is constructed."""
    keys = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


class MembersMissing(RuntimeError):
    """Members of a group generation did not take part in time; ``ranks`` names them."""

    def __init__(self, ranks: list[int], message: str):
        super().__init__(message)
        self.ranks = ranks


def open_store(host: str, port: int, timeout_s: float, master: bool) -> dist.TCPStore:
    """The rendezvous store: the learner serves it (``master``) for the whole run, members connect."""
    return dist.TCPStore(host, port, is_master=master, timeout=timedelta(seconds=timeout_s),
                         wait_for_workers=False)


class Rendezvous:
    """Who is in the weight group and what it broadcast, in the store (learner writes, actors read).

    Keys: ``current`` = the newest generation g; ``gen/g/members`` = JSON list of actor ids
    (rank = index + 1); ``gen/g/count`` = broadcasts made on g; ``gen/g/b/k`` = "seq version"
    of broadcast k (1-based) on g; ``gen/g/done/k/rank`` = that rank loaded broadcast k.
    Members act on these at their own pace (between generation batches); the collective
    then blocks only until everyone named has arrived, bounded by the group's timeout.
    """

    def __init__(self, store: dist.Store):
        self.store = store

    # learner side
    def publish_generation(self, generation: int, members: list[str]) -> None:
        self.store.set(f"gen/{generation}/members", json.dumps(members))
        self.store.set("current", str(generation))

    def publish_broadcast(self, generation: int, k: int, seq: int, version: int) -> None:
        self.store.set(f"gen/{generation}/b/{k}", f"{seq} {version}")
        self.store.add(f"gen/{generation}/count", 1)

    def missing_done(self, generation: int, k: int, world_size: int, wait_s: float) -> list[int]:
        """Ranks that have not answered broadcast k (loaded or failed) after waiting up to ``wait_s``."""
        keys = [f"gen/{generation}/done/{k}/{r}" for r in range(1, world_size)]
        try:
            self.store.wait(keys, timedelta(seconds=wait_s))
        except dist.DistStoreError:
            pass  # a timeout here is the answer: the keys still missing name the failed ranks
        return [r for r, key in enumerate(keys, 1) if not self.store.check([key])]

    # member side
    def current(self) -> int | None:
        return int(self.store.get("current")) if self.store.check(["current"]) else None

    def members(self, generation: int) -> list[str]:
        return json.loads(self.store.get(f"gen/{generation}/members"))

    def count(self, generation: int) -> int:
        return self.store.add(f"gen/{generation}/count", 0)

    def broadcast_info(self, generation: int, k: int) -> tuple[int, int]:
        seq, version = self.store.get(f"gen/{generation}/b/{k}").split()
        return int(seq), int(version)

    def confirm(self, generation: int, k: int, rank: int, ok: bool = True) -> None:
        """Broadcast k loaded (``ok``), or failed here while this member lives on."""
        self.store.set(f"gen/{generation}/done/{k}/{rank}", "1" if ok else "0")

    def failed_here(self, generation: int, k: int, rank: int) -> bool:
        return self.store.get(f"gen/{generation}/done/{k}/{rank}") == b"0"


class WeightGroup:
    """One member of the broadcast group. Construction blocks until all ranks have joined.

    ``device`` is where tensors live on this member: NCCL moves them there;
    with gloo they travel through host memory whatever ``device`` is.
    """

    def __init__(self, spec: WeightGroupSpec, device: torch.device | str = "cpu", store: dist.Store | None = None):
        """``store``: the rendezvous store (the learner passes the server it keeps for the
        whole run); None connects to the one at spec.host:port."""
        self.spec = spec
        timeout = timedelta(seconds=spec.timeout_s)
        if store is None:
            store = open_store(spec.host, spec.port, spec.timeout_s, master=spec.rank == 0)
        store = dist.PrefixStore(f"gen/{spec.generation}", store)
        self.backend = backend = self._agree_backend(store, spec, gpu_uuid(device))
        self.device = torch.device(device) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            if self.device.type != "cuda" or self.device.index is None:
                raise ValueError(f"an NCCL weight group needs an explicit CUDA device, got {self.device}")
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            with _nccl_env():
                self.pg = dist.ProcessGroupNCCL(store, spec.rank, spec.world_size, opts)
            self.stream = torch.cuda.Stream(self.device)
        else:
            self.pg = dist.ProcessGroupGloo(store, spec.rank, spec.world_size, timeout)
            self.stream = None
        self._store = store  # keeps the master's server alive for the group's lifetime
        # Eager connect: the first collective creates NCCL's communicator and needs every rank.
        probe = torch.zeros(1, device=self.device)
        with self._on_stream():
            self.pg.broadcast(probe, 0).wait()
        self._sync()

    @staticmethod
    def _agree_backend(store, spec: WeightGroupSpec, mine: str | None) -> str:
        """Every member posts its GPU identity; rank 0 resolves the backend and posts it
        (or the reason it cannot), which every member then reads."""
        store.set(f"gpu/{spec.rank}", mine or "")
        if spec.rank == 0:
            keys = [f"gpu/{r}" for r in range(1, spec.world_size)]
            try:
                store.wait(keys, timedelta(seconds=spec.timeout_s))
            except dist.DistStoreError as e:  # a timeout: someone never came
                missing = [r for r, k in enumerate(keys, 1) if not store.check([k])]
                store.set(_BACKEND_KEY, f"missing:members {missing} did not join in time")
                raise MembersMissing(missing, f"weight group generation {spec.generation}: ranks {missing} "
                                              f"did not join within {spec.timeout_s:.0f} s") from e
            members = [store.get(k).decode() or None for k in keys]
            try:
                backend = resolve_backend(spec.backend, mine, members)
            except ValueError as e:
                store.set(_BACKEND_KEY, f"error:{e}")
                raise
            store.set(_BACKEND_KEY, backend)
            return backend
        backend = store.get(_BACKEND_KEY).decode()  # blocks until rank 0 has decided
        if backend.startswith("missing:"):  # this generation failed to form: wait for the next one
            raise MembersMissing([], backend.removeprefix("missing:"))
        if backend.startswith("error:"):  # a setting no generation can satisfy
            raise ValueError(backend.removeprefix("error:"))
        return backend

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def _sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def broadcast(self, named: list[tuple[str, torch.Tensor]], ready: "torch.cuda.Event | None" = None) -> int:
        """Root side: send every tensor in manifest order; returns bytes sent once the transfer is done.

        ``ready`` is an event recorded on the stream that produced ``named``."""
        manifest = make_manifest(named)
        sent = 0
        with self._on_stream():
            if ready is not None and self.stream is not None:
                self.stream.wait_event(ready)
            elif ready is not None:  # gloo from a CUDA learner: the copies to host must see them done
                ready.synchronize()
            for idx in _buckets(manifest, self.spec.bucket_bytes):
                flat = torch.cat([named[i][1].detach().reshape(-1).to(self.device) for i in idx])
                self.pg.broadcast(flat, 0).wait()
                sent += flat.numel() * flat.element_size()
        self._sync()
        return sent

    def receive(self, manifest: list) -> Iterator[tuple[str, torch.Tensor]]:
        """Receiver side: yields (name, tensor) bucket by bucket, as views of a flat buffer.

        Each bucket's transfer is complete (stream synchronised) before its
        tensors are yielded, so callers may use them on any stream."""
        for idx in _buckets(manifest, self.spec.bucket_bytes):
            shapes = [torch.Size(manifest[i][1]) for i in idx]
            with self._on_stream():
                flat = torch.empty(sum(s.numel() for s in shapes), dtype=getattr(torch, manifest[idx[0]][2]),
                                   device=self.device)
                self.pg.broadcast(flat, 0).wait()
            self._sync()
            if self.stream is not None:
                # allocated on the side stream, read by the caller on its own: without this the
                # caching allocator may hand the memory to a later bucket while copies from
                # this one are still queued there (torch.Tensor.record_stream)
                flat.record_stream(torch.cuda.current_stream(self.device))
            for i, part in zip(idx, torch.split(flat, [s.numel() for s in shapes])):
                yield manifest[i][0], part.view(shapes[idx.index(i)])

    def close(self) -> None:
        shutdown = getattr(self.pg, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.pg = None
