"""Isolation tiers: what each one is, how to launch it, and probing for it.

Tiers, strongest first (THREAT_MODEL.md says what each covers):

- ``bwrap``: bubblewrap with PID, network, mount, IPC, UTS (and, without
  root, user) namespaces; only /usr, the interpreter and the sandbox code are
  visible, read-only; /tmp is a size-capped tmpfs. Inside, everything of the
  ``landlock`` tier is applied as well.
- ``landlock``: no namespaces (a typical unprivileged pod refuses them):
  Landlock file/TCP/signal rules + seccomp + rlimits + uid switch when root +
  a fresh directory per run.
- ``rlimit``: last resort, logged loudly: rlimits, seccomp if the kernel has
  it, process-group cleanup. Not a security boundary.

``probe()`` launches a real supervisor on each tier, strongest first, and
checks from inside that the confinement applied (seccomp mode, uid, PID
namespace) before accepting a tier.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

INSIDE = str(Path(__file__).with_name("_inside").resolve())
TIERS = ("bwrap", "landlock", "rlimit")


def base_python() -> str:
    """The real interpreter behind the venv (site-packages never enter the sandbox)."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def base_prefix() -> str:
    return os.path.realpath(sys.base_prefix)


def landlock_abi() -> int:
    sys.path.insert(0, INSIDE)
    try:
        import confine  # the in-sandbox helper; import by path, it is stdlib-only
    finally:
        sys.path.remove(INSIDE)
    return confine.landlock_abi()


def _traversable_by_others(path: str) -> bool:
    """Whether a uid that is not the owner can reach path (execute bit on each dir)."""
    p = Path(path)
    for d in [p, *p.parents]:
        try:
            mode = os.stat(d).st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return True


@dataclass(frozen=True)
class Isolation:
    """What the active tier does; str() is the tier name."""

    tier: str
    namespaces: tuple[str, ...] = ()
    landlock_abi: int = 0
    seccomp: bool = False
    uid_switch: bool = False
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.tier


@dataclass(frozen=True)
class Launch:
    """Everything needed to start a supervisor on one tier (paths as seen inside)."""

    isolation: Isolation
    argv: tuple[str, ...]
    work_root: str | None  # None: the host makes a fresh dir per job
    read_paths: tuple[str, ...]
    python: str


# Inside bubblewrap the interpreter and our code are mounted here: bwrap
# copies the modes of a bind source's parents, so a prefix under /root would
# stay unreachable for the dedicated uids.
BWRAP_PYTHON = "/opt/flowrl-python"
BWRAP_INSIDE = "/opt/flowrl-sandbox"


def _read_paths(prefix: str, inside: str) -> list[str]:
    paths = [prefix, inside, "/usr", "/lib", "/lib64", "/bin"]
    return [p for p in dict.fromkeys(paths) if os.path.exists(p) or p.startswith("/opt/flowrl-")]


def _bwrap_python() -> tuple[str, str]:
    """(prefix, interpreter) as mounted inside bwrap."""
    prefix = base_prefix()
    if prefix == "/usr" or prefix.startswith("/usr/"):
        return prefix, base_python()
    return BWRAP_PYTHON, os.path.join(BWRAP_PYTHON, os.path.relpath(base_python(), prefix))


def bwrap_argv(tmpfs_mb: int, privileged: bool) -> list[str]:
    argv = [
        "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--clearenv",
    ]
    if privileged:
        # real root, no user namespace: the supervisor keeps just what it needs
        # to hand each run to a dedicated host uid and clean up after it.
        argv += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-user"]
    for top in ("/lib", "/lib64", "/bin", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    # bwrap makes missing parents 0700, which the dedicated uids cannot cross
    argv += ["--ro-bind", "/usr", "/usr", "--perms", "0755", "--dir", "/opt"]
    prefix, _ = _bwrap_python()
    if prefix != base_prefix():
        argv += ["--ro-bind", base_prefix(), prefix]
    argv += ["--ro-bind", INSIDE, BWRAP_INSIDE, "--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    return argv


def launch_for(tier: str, tmpfs_mb: int = 64) -> Launch:
    """The launch recipe for tier on this machine (not yet verified: see probe)."""
    if tier not in TIERS:
        raise ValueError(f"unknown isolation tier {tier!r}; expected one of {TIERS} or 'auto'")
    root = os.geteuid() == 0
    abi = landlock_abi()
    sup = [base_python(), "-I", "-S", os.path.join(INSIDE, "supervisor.py")]
    read = tuple(_read_paths(base_prefix(), INSIDE))
    notes = []
    if tier == "bwrap":
        if shutil.which("bwrap") is None:
            raise RuntimeError("bwrap is not installed")
        ns = ("pid", "net", "mount", "ipc", "uts") + (() if root else ("user",))
        iso = Isolation("bwrap", ns, abi, True, root, tuple(notes))
        prefix, python = _bwrap_python()
        argv = bwrap_argv(tmpfs_mb, root) + [python, "-I", "-S", os.path.join(BWRAP_INSIDE, "supervisor.py")]
        return Launch(iso, tuple(argv), "/tmp", tuple(_read_paths(prefix, BWRAP_INSIDE)), python)
    uid_switch = root and _traversable_by_others(base_prefix()) and _traversable_by_others(INSIDE)
    if root and not uid_switch:
        notes.append(f"no uid switch: {base_prefix()} or {INSIDE} is not reachable by other uids")
    if tier == "landlock":
        if abi < 1:
            raise RuntimeError("the kernel has no Landlock")
        if abi < 6 and not uid_switch:
            notes.append(f"Landlock ABI {abi} < 6: signals are not scoped and there is no uid switch")
        return Launch(Isolation("landlock", (), abi, True, uid_switch, tuple(notes)), tuple(sup), None, read, base_python())
    notes.append("rlimit tier: no file-system, network or signal isolation")
    return Launch(Isolation("rlimit", (), 0, True, uid_switch, tuple(notes)), tuple(sup), None, read, base_python())


PROBE_SOURCE = """
import json, os, socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock = "allowed"
except PermissionError:
    sock = "denied"
sec = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0]
print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "seccomp": sec, "socket": sock}))
"""


def verify_probe(iso: Isolation, stdout: str, cand_uid: int | None) -> str | None:
    """Reason the probe output shows tier iso is not in force, or None if it is."""
    try:
        seen = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"probe printed {stdout[:200]!r}"
    if iso.seccomp and (seen["seccomp"] != "2" or seen["socket"] != "denied"):
        return f"seccomp not in force: {seen}"
    if iso.uid_switch and seen["uid"] != cand_uid:
        return f"uid switch did not take: {seen}"
    if "pid" in iso.namespaces and seen["pid"] > 1000:
        return f"not in a fresh PID namespace: {seen}"
    return None


def make_work_root() -> str:
    d = tempfile.mkdtemp(prefix="flowrl-sbx-")
    os.chmod(d, 0o711)  # the per-run dir inside gets the run's uid
    return d


def run_probe_process(argv: tuple[str, ...], job: dict, timeout_s: float) -> tuple[int, str, str]:
    """Start a supervisor, give it one job, close its input; (rc, reply JSON, stderr)."""
    payload = json.dumps(job).encode()
    proc = subprocess.run(list(argv), input=struct.pack("<Q", len(payload)) + payload, capture_output=True,
                          timeout=timeout_s, env={}, cwd="/", start_new_session=True)
    return proc.returncode, proc.stdout[8:].decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
