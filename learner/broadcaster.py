"""Weight broadcaster of learner rank 0: owns the PUB socket and the broadcast
group (common/weight_sync.py), and sends each new policy to the actors in a
background thread so that training does not wait for actors to reach a
generation boundary.

Snapshots coalesce: if the trainer produces versions faster than actors take
them, only the newest pending one is sent. Broadcast k+1 starts only after
every actor took part in broadcast k. A failure (an actor gone mid-broadcast,
a timeout) is re-raised in the trainer by ``check()``.
"""
from __future__ import annotations

import logging
import threading
import time

import torch
import zmq

from common import transport
from common.keys import load_server
from common.metrics import WeightSyncMetrics
from common.protocol import Error, VersionAnnounce, WeightRef
from common.weight_sync import WeightGroup, WeightGroupSpec
from learner.hub import RunState

log = logging.getLogger("learner.broadcast")


class Broadcaster(threading.Thread):
    def __init__(self, *, pub_bind: str, advertise_host: str, spec: WeightGroupSpec | None, device: torch.device,
                 state: RunState, metrics: WeightSyncMetrics, curve_dir: str = ""):
        super().__init__(name="broadcaster", daemon=True)
        self.spec, self.state, self.metrics = spec, state, metrics
        self.ctx = zmq.Context()
        keys = load_server(curve_dir) if curve_dir else None
        # ZAP is per context and must answer before the first subscriber connects
        self.auth = transport.start_authenticator(self.ctx, keys) if keys is not None else None
        self.pub = transport.publisher(self.ctx, pub_bind, curve=keys)
        state.pub_endpoint = transport.bound_endpoint(self.pub, advertise_host)
        self._cond = threading.Condition()
        self.device = device
        """The trainer's device: snapshots live there and an NCCL group sends from it."""
        self._pending: tuple[int, list, torch.cuda.Event | None] | None = None
        self._busy = False
        self._stopping = False
        self.error: BaseException | None = None
        self.last_seconds = 0.0

    def submit(self, version: int, named: list[tuple[str, torch.Tensor]], ready: "torch.cuda.Event | None") -> None:
        """Queue ``named`` (already a snapshot the trainer will not modify) for broadcast."""
        with self._cond:
            self._pending = (version, named, ready)
            self._cond.notify_all()

    def run(self) -> None:
        try:
            group = None
            if self.spec is not None and self.spec.world_size > 1:
                log.info("forming weight group: waiting for %d actor(s)", self.spec.world_size - 1)
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)  # the current device is per thread: not device 0
                group = WeightGroup(self.spec, device=self.device)
                log.info("weight group formed (%s, %d members)", group.backend, self.spec.world_size)
            while True:
                with self._cond:
                    while self._pending is None and not self._stopping:
                        self._cond.wait()
                    if self._pending is None:
                        break
                    (version, named, ready), self._pending = self._pending, None
                    self._busy = True
                self._broadcast(group, version, named, ready)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            transport.send(self.pub, Error("shutdown", "the run is over"))
            if group is not None:
                group.close()
        except BaseException as e:  # re-raised in the trainer by check()
            self.error = e
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            raise

    def _broadcast(self, group: WeightGroup | None, version: int, named: list, ready) -> None:
        if group is None:  # no actor can take weights: only announce the version
            transport.send(self.pub, VersionAnnounce(version, self.state.weights.seq))
            return
        seq = self.state.weights.seq + 1  # this thread is the only writer of state.weights
        transport.send(self.pub, VersionAnnounce(version, seq))
        # Hub replies carry the pair too, so an actor that missed the PUB message still joins.
        # One attribute store: the hub thread sees the old pair or the new one, never a mix.
        self.state.weights = WeightRef(seq, version)
        t0 = time.perf_counter()
        nbytes = group.broadcast(named, ready)  # returns once the transfer is done
        self.last_seconds = time.perf_counter() - t0
        self.metrics.seconds.observe(self.last_seconds)
        self.metrics.bytes.inc(nbytes)
        self.metrics.count.inc()
        log.info("broadcast version %d (seq %d): %.1f MB in %.2fs", version, seq, nbytes / 1e6, self.last_seconds)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"weight broadcast failed: {self.error!r}") from self.error

    def finish(self, timeout_s: float) -> None:
        """Send what is pending, announce shutdown, stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.join(timeout=timeout_s)
        self.check()
        if self.is_alive():
            raise RuntimeError(f"weight broadcast did not finish within {timeout_s:.0f} s")
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=1000)
