"""Supervisor: one per worker slot; runs jobs one after another and reports.

Started by reward_sandbox/runner.py as ``python -I -S supervisor.py`` (inside
bubblewrap on the "bwrap" tier, directly on the others) and kept for many
jobs. Before it reads anything it forks the fork server (forkserver.py), the
clean parent of all candidates. Then, per job (a length-prefixed JSON frame
on stdin; the reply is a frame on stdout) and per run of the job:

- writes the program to a fresh work dir and asks the fork server for a
  candidate with stdin/stdout/stderr (and, judging, the judge channel);
- in judge mode forks the judge (judge.py), confined as well, which holds the
  tests and reports per-test verdicts on a pipe only it can write;
- reads stdout/stderr into capped buffers, enforces the wall-clock deadline,
  then kills and reaps everything the run started. It is a child subreaper:
  processes that called setsid and lost their parent come back to it, and
  every descendant except the fork server is killed.

Statuses: ok, error, timeout, memory, output_limit, killed.
"""

import json
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import confine  # noqa: E402
import forkserver  # noqa: E402

MEMORY_EXIT = 201
SETUP_FAILED_EXIT = 202
EXIT_GRACE_S = 0.05  # after the candidate exits, how long its pipes may stay open
MAX_JOB_BYTES = 64 << 20
PRELOAD_JUDGE = ("judge", "ast", "importlib", "random", "math", "re", "copy", "string", "collections", "itertools", "typing")


# -- process tree ----------------------------------------------------------
_HAVE_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children(pid):
    """Children of every thread of ``pid``: a child is listed under the thread that forked it,
    so a program that forks from a thread of its own would hide it from the main thread's list."""
    if not _HAVE_CHILDREN_FILE:
        return _children_by_scan().get(pid, [])
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass  # exited while we looked: what it had is reparented to us and found on the next scan
    return out


def _children_by_scan():
    """{ppid: [pid, ...]} from every /proc/<pid>/stat (kernels without CONFIG_PROC_CHILDREN)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue  # exited while we looked
            out.setdefault(ppid, []).append(int(name))
    return out


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def descendants(exclude):
    """Live pids below us, skipping the pids in exclude themselves (not their children)."""
    out, todo = [], _children(os.getpid())
    while todo:
        pid = todo.pop()
        if pid not in exclude and not _zombie(pid):
            out.append(pid)
        todo.extend(_children(pid))
    return out


def _reap_ours():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep(exclude):
    """SIGKILL every descendant but exclude until none is left alive; reap what is ours.
    Done only after two empty scans a moment apart: the children lists are not exact while
    processes fork or exit, and an orphan being reparented to us was once missed by one."""
    empty = 0
    for attempt in range(1000):
        alive = descendants(exclude)
        if not alive:
            empty += 1
            if empty == 2:
                break
            time.sleep(0.002)
            continue
        empty = 0
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap_ours()
        if attempt:
            time.sleep(0.001)  # let the kernel finish the kills we sent
    _reap_ours()


# -- one run ---------------------------------------------------------------
def _fork_judge(job, req_w, rep_r, res_w):
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDWR)
        fds = [devnull, devnull, res_w, req_w, rep_r]
        for fd, dst in zip(confine.move_high(fds), range(5)):
            os.dup2(fd, dst, inheritable=True)
        os.closerange(5, 65536)
        os.chdir("/")
        confine.confine(job["judge"])
        confine.set_pdeathsig(signal.SIGKILL)
        sys.set_int_max_str_digits(0)
        import judge

        judge.run(job["tests"], job.get("entry_point"), 3, 4, 2)
        code = 0
    except BaseException as exc:  # report and exit; never fall back into the supervisor loop
        try:
            os.write(2, json.dumps({"done": True, "error": f"judge failed: {type(exc).__name__}: {exc}"[:500]}).encode() + b"\n")
        except OSError:
            pass
    os._exit(code)


def _status_of(wstatus, timed_out, over_limit):
    if timed_out:
        return "timeout", -signal.SIGKILL
    if over_limit:
        return "output_limit", -signal.SIGKILL
    if wstatus is None:
        return "killed", None
    if os.WIFEXITED(wstatus):
        rc = os.WEXITSTATUS(wstatus)
        return {0: "ok", MEMORY_EXIT: "memory"}.get(rc, "error"), rc
    sig = os.WTERMSIG(wstatus)
    status = {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "output_limit", signal.SIGKILL: "killed"}.get(sig, "error")
    return status, -sig


class Supervisor:
    def __init__(self):
        confine.set_subreaper()
        confine.set_pdeathsig(signal.SIGKILL)
        self.fs_pid, self.fs = forkserver.start()  # before any job data exists in this process
        # What every judge imports, loaded once here instead of in each forked judge.
        for name in PRELOAD_JUDGE:
            __import__(name)

    def _fs_recv(self):
        msg = self.fs.recv(1 << 16)
        if not msg:
            raise RuntimeError("fork server died")
        return json.loads(msg)

    def run_one(self, job, k, stdin_data):
        cap = job["max_output"]
        workdir = os.path.join(job["work_root"], f"run{k}")
        os.mkdir(workdir, 0o700)
        with open(os.path.join(workdir, "prog.py"), "w", encoding="utf-8") as f:
            f.write(job["source"])
        spec = dict(job["candidate"])
        if spec.get("uid") is not None:
            os.chown(workdir, spec["uid"], spec.get("gid", spec["uid"]))
        spec["write_paths"] = [workdir] + job.get("extra_write_paths", [])
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, stdin_data.encode("utf-8", "surrogateescape"))
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        judging = job["mode"] == "judge"
        fds = [stdin_fd, out_w, err_w]
        res_r = None
        if judging:
            req_r, req_w = os.pipe()
            rep_r, rep_w = os.pipe()
            res_r, res_w = os.pipe()
            fds += [req_r, rep_w]
        t0 = time.monotonic()
        req = {"spec": spec, "workdir": workdir, "mode": "serve" if judging else "exec",
               "fresh": bool(job.get("fresh")), "python": job["python"]}
        socket.send_fds(self.fs, [json.dumps(req).encode()], fds)
        cpid = self._fs_recv()["pid"]
        own = fds
        if judging:
            _fork_judge(job, req_w, rep_r, res_w)
            own = fds + [req_w, rep_r, res_w]
        for fd in own:
            os.close(fd)

        bufs = {out_r: bytearray(), err_r: bytearray()}
        reports = bytearray()
        sel = selectors.DefaultSelector()
        for fd in (out_r, err_r) + ((res_r,) if judging else ()):
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self.fs, selectors.EVENT_READ)
        deadline = t0 + job["timeout_s"]
        cstatus = exited_at = None
        timed_out = over_limit = judge_done = False
        open_fds = {out_r, err_r}
        while not over_limit:
            now = time.monotonic()
            if judging and judge_done:
                break
            if not judging and cstatus is not None and (not open_fds or now - exited_at > EXIT_GRACE_S):
                break  # exited; grandchildren holding the pipes get no more time
            if now >= deadline:
                timed_out = True
                break
            wait = deadline - now
            if exited_at is not None and not judging:
                wait = min(wait, EXIT_GRACE_S)
            for key, _ in sel.select(timeout=wait):
                if key.fileobj is self.fs:
                    msg = self._fs_recv()
                    if msg.get("exit") == cpid:
                        cstatus, exited_at = msg["status"], time.monotonic()
                        sel.unregister(self.fs)
                    continue
                fd = key.fd
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    judge_done = judge_done or fd == res_r
                    continue
                if fd == res_r:
                    reports += data[: max(0, (1 << 20) - len(reports))]  # a judge writes far less
                    continue
                room = cap - len(bufs[fd])
                bufs[fd] += data[:room]
                over_limit = over_limit or len(data) > room
        duration = time.monotonic() - t0
        still_serving = cstatus is None and judging and judge_done and not over_limit
        sweep({self.fs_pid})
        while cstatus is None:  # killed by the sweep: the fork server reaps it and tells us
            msg = self._fs_recv()
            if msg.get("exit") == cpid:
                cstatus = msg["status"]
        if still_serving:
            cstatus = 0  # still answering the judge when the tests finished: ran to completion
        sel.close()
        for fd in list(bufs) + ([res_r] if judging else []):
            os.close(fd)
        status, rc = _status_of(cstatus, timed_out, over_limit)
        result = {
            "status": status,
            "returncode": rc,
            "stdout": bufs[out_r].decode("utf-8", "replace"),
            "stderr": bufs[err_r].decode("utf-8", "replace"),
            "duration_s": round(duration, 6),
        }
        if judging:
            result["reports"] = reports.decode("utf-8", "replace")
        shutil.rmtree(workdir, ignore_errors=True)
        return result


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main():
    sup = Supervisor()
    while True:
        head = _read_exact(0, 8)
        if head is None:
            break
        (n,) = struct.unpack("<Q", head)
        if n > MAX_JOB_BYTES:
            raise SystemExit(f"job of {n} bytes refused")
        job = json.loads(_read_exact(0, n))
        runs = [sup.run_one(job, k, s) for k, s in enumerate(job["stdins"])]
        reply = json.dumps({"runs": runs}).encode()
        _write_all(1, struct.pack("<Q", len(reply)) + reply)


if __name__ == "__main__":
    main()
