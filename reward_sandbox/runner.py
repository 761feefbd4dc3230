"""Runner: the host side of sandboxed code execution, with a worker pool.

A Runner owns ``workers`` slots. Each slot keeps one supervisor process
(reward_sandbox/_inside/supervisor.py) on the active isolation tier for many
jobs (recycled after ``jobs_per_supervisor``), and the supervisor forks each
program from its clean fork server instead of starting an interpreter, a
bubblewrap and a multiprocessing Manager per program. That reuse, with a
thread per slot, is where run_many gets its speed.

    from reward_sandbox import run_code, run_many
    run_code("print(input())", stdin="hi\\n")   # ExecResult(status="ok", ...)

The host never trusts what comes back beyond its size: the supervisor's reply
is a length-prefixed frame read with a cap and a backstop deadline; a
supervisor that dies or overruns is killed (with its PID namespace or uid)
and its job answered "killed"; one found dead before its job is replaced and
the job goes to the replacement.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import selectors
import shutil
import struct
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import tiers, uids

log = logging.getLogger("reward_sandbox")

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")
# Supervisor start-up and clean-up on a loaded machine, on top of the runs.
BACKSTOP_GRACE_S = 15.0


@dataclass(frozen=True)
class Limits:
    """Per-run limits; validated so that a bad value names its field."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_bytes: int = 1 << 20
    file_size_mb: int = 16
    max_procs: int = 64

    def __post_init__(self) -> None:
        checks = {
            "timeout_s": (self.timeout_s, 0.01, 600.0),
            "memory_mb": (self.memory_mb, 32, 65536),
            "max_output_bytes": (self.max_output_bytes, 1, 64 << 20),
            "file_size_mb": (self.file_size_mb, 0, 4096),
            "max_procs": (self.max_procs, 1, 4096),
        }
        for name, (value, lo, hi) in checks.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
                raise ValueError(f"Limits.{name} must be a number in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class RunnerConfig:
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    tier: str = "auto"  # or one of tiers.TIERS to insist on it
    tmpfs_mb: int = 64
    uid_base: int = 200_000
    prestart: bool = True
    fresh_interpreter: bool = False
    """Run each program in a freshly exec'd interpreter instead of a fork of the
    slot's clean fork server: nothing at all shared between runs, ~3x slower."""
    jobs_per_supervisor: int = 500
    """Recycle a slot's supervisor (and its bwrap namespace) after this many jobs."""

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 512:
            raise ValueError(f"RunnerConfig.workers must be an int in [1, 512], got {self.workers!r}")
        if self.tier != "auto" and self.tier not in tiers.TIERS:
            raise ValueError(f"RunnerConfig.tier must be 'auto' or one of {tiers.TIERS}, got {self.tier!r}")
        if not isinstance(self.tmpfs_mb, int) or self.tmpfs_mb < 8:
            raise ValueError(f"RunnerConfig.tmpfs_mb must be an int >= 8, got {self.tmpfs_mb!r}")
        if not isinstance(self.uid_base, int) or self.uid_base < 1000:
            raise ValueError(f"RunnerConfig.uid_base must be an int >= 1000, got {self.uid_base!r}")
        if not isinstance(self.jobs_per_supervisor, int) or self.jobs_per_supervisor < 1:
            raise ValueError(f"RunnerConfig.jobs_per_supervisor must be an int >= 1, got {self.jobs_per_supervisor!r}")


@dataclass(frozen=True)
class ExecResult:
    status: str  # one of STATUSES; "ok" = ran to completion with exit code 0
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float


@dataclass(frozen=True)
class Job:
    """One program and what to do with it: plain runs (one per stdin) or judged tests."""

    source: str
    stdins: tuple[str, ...] = ("",)
    tests: str | None = None  # judge mode when set
    entry_point: str | None = None
    limits: Limits = Limits()


@dataclass(frozen=True)
class JobResult:
    runs: list[ExecResult]
    tests_total: int = 0
    tests_passed: int = 0
    judge_error: str | None = None


class _Slot:
    def __init__(self, index: int, pair: uids.UidPair | None) -> None:
        self.index = index
        self.pair = pair
        self.proc: subprocess.Popen | None = None
        self.jobs = 0


class Runner:
    def __init__(self, config: RunnerConfig | None = None, metrics=None) -> None:
        self.config = config or RunnerConfig()
        self.metrics = metrics
        self.launch = _choose_launch(self.config)
        self.isolation = self.launch.isolation
        iso = self.isolation
        log.info("reward_sandbox isolation tier %s (namespaces=%s landlock_abi=%d seccomp=%s uid_switch=%s) %s",
                 iso.tier, ",".join(iso.namespaces) or "-", iso.landlock_abi, iso.seccomp, iso.uid_switch, "; ".join(iso.notes))
        if iso.tier == "rlimit":
            log.warning("reward_sandbox: the rlimit tier is in force; untrusted code is NOT isolated")
        if metrics is not None:
            metrics.set_tier(iso.tier)
        pairs = uids.claim_pairs(self.config.workers, self.config.uid_base) if iso.uid_switch else [None] * self.config.workers
        self._pairs = [p for p in pairs if p is not None]
        self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._all_slots = [_Slot(i, p) for i, p in enumerate(pairs)]
        for s in self._all_slots:
            self._slots.put(s)
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="sandbox")
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        if self.config.prestart:
            # Supervisors are started from the pool's long-lived threads only:
            # bwrap --die-with-parent and PR_SET_PDEATHSIG fire when the
            # *thread* that started them ends, and the caller's may be brief.
            for _ in self._all_slots:
                self._pool.submit(self._warm)

    # -- supervisor processes ------------------------------------------------
    def _warm(self) -> None:
        slot = self._slots.get()
        try:
            if slot.proc is None and not self._closed:
                self._start(slot)
        finally:
            self._slots.put(slot)

    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(
            list(self.launch.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={}, cwd="/", start_new_session=True, close_fds=True, bufsize=0,
        )

    def _job_dict(self, job: Job, slot: _Slot, work_root: str) -> dict:
        lim = job.limits
        cpu = math.ceil(lim.timeout_s) + 1
        read = list(self.launch.read_paths)
        abi = self.isolation.landlock_abi if self.isolation.tier != "rlimit" else 0
        cand_uid = slot.pair.candidate if slot.pair else None
        judge_uid = slot.pair.judge if slot.pair else None
        rl = {"AS": lim.memory_mb << 20, "CPU": cpu, "FSIZE": lim.file_size_mb << 20, "NOFILE": 64, "CORE": 0}
        if cand_uid is not None:
            rl["NPROC"] = lim.max_procs  # counted per uid: only meaningful for a uid of our own
        jrl = {"AS": 1024 << 20, "CPU": cpu, "FSIZE": 0, "NOFILE": 64, "CORE": 0}
        if judge_uid is not None:
            jrl["NPROC"] = 1
        return {
            "mode": "judge" if job.tests is not None else "exec",
            "source": job.source,
            "stdins": list(job.stdins),
            "tests": job.tests,
            "entry_point": job.entry_point,
            "timeout_s": lim.timeout_s,
            "max_output": lim.max_output_bytes,
            "python": self.launch.python,
            "fresh": self.config.fresh_interpreter,
            "work_root": work_root,
            "extra_write_paths": ["/dev/null"],
            # /proc/self resolves, when the rule is added, to the candidate's own entry
            "candidate": {"rlimits": rl, "uid": cand_uid, "gid": cand_uid, "landlock_abi": abi,
                          "read_paths": read + ["/proc/self"], "seccomp": self.isolation.seccomp},
            "judge": {"rlimits": jrl, "uid": judge_uid, "gid": judge_uid, "landlock_abi": abi,
                      "read_paths": read, "write_paths": [], "seccomp": self.isolation.seccomp},
        }

    def _kill_slot(self, slot: _Slot) -> None:
        """Backstop: the supervisor overran; take everything of this slot down."""
        proc = slot.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.kill()
        proc.wait()
        if slot.pair is not None and self.isolation.tier != "bwrap":
            for uid in (slot.pair.candidate, slot.pair.judge):
                subprocess.run([tiers.base_python(), "-I", "-S", "-c",
                                f"import os\ntry:\n os.setresuid({uid},{uid},{uid}); os.kill(-1, 9)\nexcept OSError: pass"],
                               env={}, cwd="/", timeout=30, check=False)

    def _execute(self, job: Job) -> JobResult:
        slot = self._slots.get()
        with self._lock:
            self._pending -= 1
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._pending)
        try:
            result = None
            for _attempt in range(3):
                # a supervisor that died while idle (killed from outside) has
                # not seen this job: start another, do not blame the job
                if slot.proc is None or slot.proc.poll() is not None:
                    self._reap_slot(slot)
                    self._start(slot)
                work_root = self.launch.work_root or tiers.make_work_root()
                try:
                    result = self._talk(slot, self._job_dict(job, slot, work_root), job)
                finally:
                    if self.launch.work_root is None:
                        shutil.rmtree(work_root, ignore_errors=True)
                if result is not None:
                    break
                self._reap_slot(slot)
            if result is None:
                result = JobResult([ExecResult("killed", None, "", "sandbox supervisor failed to start", 0.0)] * len(job.stdins))
            slot.jobs += 1
            if slot.jobs >= self.config.jobs_per_supervisor:
                self._reap_slot(slot)
        finally:
            if slot.proc is None and self.config.prestart and not self._closed:
                self._start(slot)
            self._slots.put(slot)
        if self.metrics is not None:
            for r in result.runs:
                self.metrics.observe(r.status, self.isolation.tier, r.duration_s)
        return result

    @staticmethod
    def _reap_slot(slot: _Slot) -> None:
        proc, slot.proc, slot.jobs = slot.proc, None, 0
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass  # a broken pipe on close: the process is gone anyway

    def _talk(self, slot: _Slot, job_dict: dict, job: Job) -> JobResult | None:
        """The job's result; None if the supervisor was dead before it took the job."""
        proc = slot.proc
        n = len(job.stdins)
        killed = JobResult([ExecResult("killed", None, "", "", 0.0)] * n)
        payload = json.dumps(job_dict).encode()
        try:
            proc.stdin.write(struct.pack("<Q", len(payload)) + payload)
            proc.stdin.flush()
        except BrokenPipeError:
            log.warning("sandbox supervisor of slot %d was dead before its job; starting another", slot.index)
            return None
        cap = n * (12 * job.limits.max_output_bytes + 8192) + (2 << 20)
        deadline = time.monotonic() + BACKSTOP_GRACE_S + n * (job.limits.timeout_s + 1.0)
        reply, err = _read_frame(proc, cap, deadline)
        if reply is None:
            self._kill_slot(slot)
            log.error("sandbox supervisor of slot %d failed, overran its deadline or its output cap; killed: %s",
                      slot.index, err.decode("utf-8", "replace")[-2000:])
            return killed
        try:
            reply = json.loads(reply)
            runs = [ExecResult(r["status"], r["returncode"], r["stdout"], r["stderr"], float(r["duration_s"])) for r in reply["runs"]]
        except (ValueError, KeyError, TypeError) as exc:
            self._kill_slot(slot)
            log.error("sandbox supervisor sent a malformed reply (%s); killed", exc)
            return killed
        for r in runs:
            if r.status not in STATUSES:
                raise RuntimeError(f"supervisor reported unknown status {r.status!r}")
        if job.tests is None:
            return JobResult(runs)
        return _judge_verdict(runs, reply["runs"][0].get("reports", ""))

    # -- public API ----------------------------------------------------------
    def submit(self, job: Job) -> Future:
        if self._closed:
            raise RuntimeError("Runner is closed")
        with self._lock:
            self._pending += 1
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._pending)
        return self._pool.submit(self._execute, job)

    def run_jobs(self, jobs: list[Job]) -> list[JobResult]:
        futures = [self.submit(j) for j in jobs]
        return [f.result() for f in futures]

    def run_code(self, source: str, *, stdin: str = "", **limits) -> ExecResult:
        return self.run_jobs([Job(_check_source(source), (_check_stdin(stdin),), limits=Limits(**limits))])[0].runs[0]

    def run_many(self, sources, *, stdin: str = "", **limits) -> list[ExecResult]:
        lim = Limits(**limits)
        jobs = [Job(_check_source(s), (_check_stdin(stdin),), limits=lim) for s in sources]
        return [r.runs[0] for r in self.run_jobs(jobs)]

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)
        for s in self._all_slots:
            self._reap_slot(s)
        uids.release(self._pairs)

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_frame(proc: subprocess.Popen, cap: int, deadline: float) -> tuple[bytes | None, bytes]:
    """One length-prefixed reply from the supervisor, or None (dead, late or oversized).

    Also drains its stderr (keeping the tail) so that it can never block on it.
    """
    data, err = bytearray(), bytearray()
    want = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, data)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    try:
        while True:
            if want is None and len(data) >= 8:
                (want,) = struct.unpack("<Q", data[:8])
                if want > cap:
                    return None, err
            if want is not None and len(data) >= 8 + want:
                return bytes(data[8 : 8 + want]), err
            left = deadline - time.monotonic()
            if left <= 0 or not sel.get_map():
                return None, err
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    if key.data is data:
                        return None, err
                    continue
                key.data.extend(chunk)
                if key.data is err and len(err) > 1 << 16:
                    del err[: len(err) - (1 << 15)]
    finally:
        sel.close()


def _check_source(source: object) -> str:
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    return source


def _check_stdin(stdin: object) -> str:
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be str, got {type(stdin).__name__}")
    return stdin


def _judge_verdict(runs: list[ExecResult], reports: str) -> JobResult:
    """Count the judge's per-test verdicts; anything malformed counts as failed."""
    total, passed, error, gone = 0, set(), None, False
    for line in reports.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if isinstance(msg.get("total"), int) and total == 0:
            total = max(1, min(msg["total"], 100_000))
            error = msg.get("error") or error
        elif isinstance(msg.get("t"), int) and msg.get("ok") is True and 0 <= msg["t"] < total:
            passed.add(msg["t"])
        elif msg.get("done") is True:
            error = msg.get("error") or error
            gone = msg.get("candidate_gone") is True
    run = runs[0]
    if gone and run.status == "ok":
        # exited with 0 before the tests were done: that is not "ran to completion"
        run = ExecResult("error", run.returncode, run.stdout, run.stderr + "\n[sandbox] program exited before the tests finished\n", run.duration_s)
    return JobResult([run], max(total, 1), len(passed), error)


def _choose_launch(config: RunnerConfig) -> tiers.Launch:
    order = tiers.TIERS if config.tier == "auto" else (config.tier,)
    reasons = []
    for tier in order:
        try:
            launch = tiers.launch_for(tier, config.tmpfs_mb)
        except RuntimeError as exc:
            reasons.append(f"{tier}: {exc}")
            continue
        reason = _probe(launch, config)
        if reason is None:
            return launch
        reasons.append(f"{tier}: {reason}")
        log.info("reward_sandbox: tier %s unavailable: %s", tier, reason)
    raise RuntimeError("no sandbox tier works here: " + " | ".join(reasons))


_probe_cache: dict[tuple, str | None] = {}


def _probe(launch: tiers.Launch, config: RunnerConfig) -> str | None:
    key = (launch.argv, launch.isolation, config.uid_base)
    if key in _probe_cache:
        return _probe_cache[key]
    runner = object.__new__(Runner)
    runner.launch, runner.isolation, runner.config = launch, launch.isolation, config
    pairs = uids.claim_pairs(1, config.uid_base) if launch.isolation.uid_switch else [None]
    slot = _Slot(0, pairs[0])
    work_root = launch.work_root or tiers.make_work_root()
    try:
        job = runner._job_dict(Job(tiers.PROBE_SOURCE, limits=Limits(timeout_s=10.0)), slot, work_root)
        try:
            rc, out, err = tiers.run_probe_process(launch.argv, job, 60.0)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"probe failed to run: {exc}"
        try:
            r = json.loads(out)["runs"][0]
        except (ValueError, KeyError, IndexError):
            return f"supervisor rc={rc}: {err.strip()[-500:]}"
        if r["status"] != "ok":
            reason = f"probe program {r['status']}: {r['stderr'].strip()[-500:]}"
        else:
            reason = tiers.verify_probe(launch.isolation, r["stdout"], slot.pair.candidate if slot.pair else None)
    finally:
        if launch.work_root is None:
            shutil.rmtree(work_root, ignore_errors=True)
        uids.release([p for p in pairs if p is not None])
    _probe_cache[key] = reason
    return reason
