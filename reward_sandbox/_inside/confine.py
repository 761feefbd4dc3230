"""Confinement primitives applied to a process before it runs untrusted code.

Standard library + ctypes only (runs under ``python -I -S``). Used by
supervisor.py in the forked child just before ``execve`` of the candidate
interpreter, and for the judge. Order matters and is done by ``confine()``:

1. rlimits (address space, CPU, file size, open files, processes, core);
2. empty the capability bounding/ambient sets and lock the securebits, then
   drop to a dedicated uid/gid when we hold CAP_SETUID (root in a
   container), then clear every remaining capability (also as uid 0);
3. PR_SET_NO_NEW_PRIVS (required for both of the next two without privilege);
4. Landlock: read/execute only the listed paths, write only the work dir, no
   TCP bind/connect (ABI >= 4), no signals or abstract unix sockets outside
   the domain (ABI >= 6);
5. seccomp: deny socket(), ptrace, namespace/mount/kernel-admin calls and
   clone() with CLONE_NEW* flags; clone3 answers ENOSYS so libc falls back.

Every failure raises ConfineError: a child that cannot be confined as asked
must not run the program.
"""

import ctypes
import errno
import os
import resource
import struct

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.restype = ctypes.c_int

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
SECCOMP_MODE_FILTER = 2

# x86_64 syscall numbers
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class ConfineError(Exception):
    pass


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise ConfineError(f"{what} failed: {os.strerror(err)} (errno {err})")
    return ret


# -- rlimits and uid -------------------------------------------------------
def set_rlimits(limits: dict) -> None:
    """limits: {"AS": bytes, "CPU": s, "FSIZE": bytes, "NOFILE": n, "NPROC": n, "CORE": 0}."""
    for name, value in limits.items():
        if value is None:
            continue
        res = getattr(resource, "RLIMIT_" + name)
        soft, hard = (value, value + 1) if name == "CPU" else (value, value)
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError) as exc:
            raise ConfineError(f"setrlimit {name}={value}: {exc}") from exc


def drop_uid(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise ConfineError(f"uid switch to {uid} did not take")


PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECUREBITS = 28
SYS_capset = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80


def drop_bounding_set() -> None:
    """Empty the capability bounding and ambient sets, so that no exec can regain
    a capability (root's implicit ones included). Needs CAP_SETPCAP; without
    it (not root) there is nothing to drop that matters and this does nothing."""
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == errno.EINVAL:
                break  # past the last capability this kernel knows
            return  # EPERM: no CAP_SETPCAP
    libc.prctl(PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0)


def clear_capabilities() -> None:
    """Drop every effective, permitted and inheritable capability of this process.

    A uid switch does this by itself; this covers running on as uid 0 (no
    other uid can reach the interpreter) where root would keep them all, e.g.
    CAP_MKNOD to make a device node for the host disk in its work dir.
    """
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    _check(libc.syscall(SYS_capset, ctypes.create_string_buffer(header, 8), ctypes.create_string_buffer(data, 24)), "capset")


def no_new_privs() -> None:
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def set_subreaper() -> None:
    _check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")


def set_pdeathsig(sig: int) -> None:
    _check(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "PR_SET_PDEATHSIG")


def move_high(fds: list) -> list:
    """Duplicates of fds numbered >= 100, so dup2 onto 0..4 cannot clobber a source."""
    import fcntl

    return [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]


# -- Landlock ----------------------------------------------------------------
def landlock_abi() -> int:
    """Landlock ABI version of the running kernel, 0 if unavailable."""
    ret = libc.syscall(SYS_landlock_create_ruleset, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, int(ret))


def _fs_mask(abi: int) -> int:
    mask = (1 << 13) - 1
    if abi >= 2:
        mask |= FS_REFER
    if abi >= 3:
        mask |= FS_TRUNCATE
    if abi >= 5:
        mask |= FS_IOCTL_DEV
    return mask


def landlock(read_paths: list, write_paths: list, abi: int) -> None:
    """Restrict this process (and its future children) with a new Landlock layer.

    read_paths get read+execute, write_paths get everything, the rest of the
    file system nothing. TCP bind/connect are handled with no rule (denied)
    from ABI 4; signals and abstract unix sockets are scoped from ABI 6.
    """
    if abi < 1:
        raise ConfineError("Landlock not available")
    handled_fs = _fs_mask(abi)
    handled_net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("Q", handled_fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(libc.syscall(SYS_landlock_create_ruleset, buf, ctypes.c_size_t(len(attr)), 0), "landlock_create_ruleset")
    try:
        for paths, access in ((read_paths, FS_READ), (write_paths, handled_fs)):
            for path in paths:
                try:
                    pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # e.g. /lib64 absent on this distribution
                try:
                    allowed = access & handled_fs
                    if not os.path.isdir(path):
                        # rules on a file may only carry file rights
                        allowed &= FS_EXECUTE | FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, pfd), 12)
                    _check(libc.syscall(SYS_landlock_add_rule, fd, LANDLOCK_RULE_PATH_BENEATH, rule, 0), f"landlock_add_rule {path}")
                finally:
                    os.close(pfd)
        _check(libc.syscall(SYS_landlock_restrict_self, fd, 0), "landlock_restrict_self")
    finally:
        os.close(fd)


# -- seccomp -----------------------------------------------------------------
AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
X32_SYSCALL_BIT = 0x40000000
CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080

SYS_socket = 41
SYS_clone = 56
SYS_clone3 = 435
# Denied outright with EPERM: tracing other processes, namespaces and
# mounts, kernel keyrings/BPF/perf/modules, io_uring (bypasses seccomp for
# the operations it performs), and clock/host administration.
DENIED_SYSCALLS = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "kcmp": 312,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "open_by_handle_at": 304, "name_to_handle_at": 303,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "settimeofday": 164, "clock_settime": 227,
    "adjtimex": 159, "clock_adjtime": 305, "syslog": 103, "quotactl": 179, "iopl": 172, "ioperm": 173,
    "vhangup": 153, "personality": 135, "sethostname": 170, "setdomainname": 171,
}


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_program() -> bytes:
    """The BPF program, as bytes of struct sock_filter."""
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
    deny = RET_ERRNO | errno.EPERM
    body = []  # (code, jt_label|int, jf_label|int, k)
    body.append((LD, 0, 0, 4))  # arch
    body.append((JEQ, 1, 0, AUDIT_ARCH_X86_64))
    body.append((RET, 0, 0, RET_KILL_PROCESS))
    body.append((LD, 0, 0, 0))  # syscall nr
    body.append((JSET, "deny", 0, X32_SYSCALL_BIT))
    body.append((JEQ, "deny", 0, SYS_socket))
    body.append((JEQ, "clone", 0, SYS_clone))
    body.append((JEQ, "enosys", 0, SYS_clone3))
    for nr in sorted(DENIED_SYSCALLS.values()):
        body.append((JEQ, "deny", 0, nr))
    body.append((RET, 0, 0, RET_ALLOW))
    labels = {"clone": len(body)}
    body.append((LD, 0, 0, 16))  # args[0], low 32 bits: clone flags
    body.append((JSET, "deny", 0, CLONE_NEW_MASK))
    body.append((RET, 0, 0, RET_ALLOW))
    labels["enosys"] = len(body)
    body.append((RET, 0, 0, RET_ERRNO | errno.ENOSYS))
    labels["deny"] = len(body)
    body.append((RET, 0, 0, deny))
    out = []
    for i, (code, jt, jf, k) in enumerate(body):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ConfineError("seccomp program jump out of range")
        out.append(_bpf(code, jt, jf, k))
    return b"".join(out)


def seccomp() -> None:
    prog = seccomp_program()
    n = len(prog) // 8
    filt = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(n, ctypes.addressof(filt))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


def confine(spec: dict) -> None:
    """Apply everything spec asks for, in the safe order (module docstring).

    spec keys: rlimits (dict), uid/gid (int or None), landlock_abi (int, 0 =
    skip), read_paths, write_paths (lists), seccomp (bool).
    """
    set_rlimits(spec.get("rlimits", {}))
    drop_bounding_set()
    if spec.get("uid") is not None:
        drop_uid(spec["uid"], spec.get("gid", spec["uid"]))
    clear_capabilities()
    no_new_privs()
    if spec.get("landlock_abi", 0) > 0:
        landlock(spec.get("read_paths", []), spec.get("write_paths", []), spec["landlock_abi"])
    if spec.get("seccomp"):
        seccomp()
