"""Adversarial suite: each guarantee of reward_sandbox/THREAT_MODEL.md attacked
with a real hostile program, on every isolation tier this machine offers.

Every test checks both that the reward is 0 and that the host is unaffected
afterwards: no stray process (found by a marker the attack stamps on its
processes, or by the slot uids), the file not written, the listener not
reached, the victim alive.

Run: .venv/bin/python -m pytest tests/unit/test_sandbox_attacks.py -q
"""

import glob
import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from reward_sandbox.code_reward import code_results
from reward_sandbox.runner import Runner, RunnerConfig



def _available_tiers():
    """The real isolation tiers this machine offers (rlimit is not one)."""
    found = []
    for tier in ("bwrap", "landlock"):
        try:
            Runner(RunnerConfig(workers=1, tier=tier, prestart=False)).close()
        except RuntimeError:
            continue  # e.g. no bwrap here: that tier's attacks are not run
        found.append(tier)
    return found


TIERS = _available_tiers()

# f(x) must return 2x; every attack program below gets it wrong or never defines it
TESTS = json.dumps({"asserts": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 10\n", "entry_point": "f"})
WRONG = "\ndef f(x):\n    return x\n"


@pytest.fixture(scope="module", params=TIERS)
def runner(request):
    r = Runner(RunnerConfig(workers=2, tier=request.param))
    yield r
    r.close()


def marker():
    return "fx" + uuid.uuid4().hex[:10]


def mark_code(m):
    """Python that renames the current process (comm) to m; children inherit it."""
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {m.encode()!r}, 0, 0, 0)\n"


def processes_with(m):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if (m.encode() in comm or m.encode() in cmd) and state not in (b"Z", b"X"):
            found.append(int(pid))
    return found


def slot_uid_processes(runner):
    uids = {u for p in runner._pairs for u in (p.candidate, p.judge)}
    if not uids:
        return []
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                st = os.stat(f"/proc/{pid}")
            except OSError:
                continue
            if st.st_uid in uids:
                out.append(int(pid))
    return out


def score(runner, program, timeout_s=5.0, memory_mb=256):
    return code_results([program], [TESTS], timeout_s=timeout_s, memory_mb=memory_mb, runner=runner)[0]


def assert_clean(runner, m=None):
    deadline = time.monotonic() + 2.0
    while True:
        stray = (processes_with(m) if m else []) + slot_uid_processes(runner)
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stray == [], f"stray processes left behind: {stray}"


def test_infinite_loop(runner):
    t = time.monotonic()
    r = runner.run_code("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout"
    assert time.monotonic() - t < 15  # the deadline, plus scheduling on a loaded machine
    res = score(runner, "while True:\n    pass\n" + WRONG, timeout_s=1.0)
    assert res.score == 0.0 and res.status == "timeout"
    assert_clean(runner)


def test_sleep(runner):
    r = runner.run_code("import time\ntime.sleep(60)\n", timeout_s=0.5)
    assert r.status == "timeout" and r.duration_s < 10
    assert score(runner, "import time\ntime.sleep(60)\ndef f(x):\n    return 2 * x\n", timeout_s=0.5).score == 0.0
    assert_clean(runner)


def test_fork_bomb(runner):
    m = marker()
    prog = mark_code(m) + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = runner.run_code(prog, timeout_s=1.0)
    assert r.status in ("timeout", "error", "killed")
    assert score(runner, prog + WRONG, timeout_s=1.0).score == 0.0
    assert_clean(runner, m)
    assert runner.run_code("print('still works')").stdout == "still works\n"


def test_memory_bomb(runner):
    r = runner.run_code("x = bytearray(4 << 30)\n", memory_mb=256)
    assert r.status == "memory"
    r = runner.run_code("a = []\nwhile True:\n    a.append(' ' * (1 << 20))\n", memory_mb=256)
    assert r.status == "memory"
    assert score(runner, "x = bytearray(4 << 30)\n" + WRONG).score == 0.0
    assert_clean(runner)


def test_output_flood(runner):
    r = runner.run_code("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)\n",
                        timeout_s=3.0, max_output_bytes=100_000)
    assert r.status == "output_limit"
    assert len(r.stdout) <= 100_000 and len(r.stderr) <= 100_000
    assert score(runner, "while True:\n    print('x' * 10000)\n" + WRONG).score == 0.0
    assert_clean(runner)


def test_large_file_write(runner, tmp_path):
    prog = "f = open('big.bin', 'wb')\nfor _ in range(1024):\n    f.write(b'0' * (1 << 20))\nf.close()\nprint('wrote')\n"
    r = runner.run_code(prog, timeout_s=5.0, file_size_mb=8)
    assert r.status in ("error", "output_limit") and "wrote" not in r.stdout
    assert "File too large" in r.stderr or r.status == "output_limit"
    assert score(runner, prog + WRONG).score == 0.0
    # the work dir went with the run (bwrap: a tmpfs inside; landlock: removed by the host)
    assert glob.glob("/tmp/flowrl-sbx-*/**/big.bin", recursive=True) == []
    assert_clean(runner)


def test_write_outside_workdir(runner, tmp_path):
    target = tmp_path / "pwned.txt"
    os.chmod(tmp_path, 0o777)
    targets = [str(target), f"/tmp/pwned-{uuid.uuid4().hex}", os.path.abspath("pwned-in-repo.txt")]
    prog = "import os\nfor p in %r:\n    try:\n        open(p, 'w').write('pwned')\n        print('WROTE', p)\n    except OSError as e:\n        print('denied', p, e)\n" % (targets,)
    r = runner.run_code(prog)
    assert "WROTE" not in r.stdout, r.stdout
    for p in targets:
        assert not os.path.exists(p), p
    assert score(runner, prog + WRONG).score == 0.0
    assert_clean(runner)


def test_read_parent_env_and_files(runner, tmp_path, monkeypatch):
    secret = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("FLOWRL_TEST_SECRET", secret)
    f = tmp_path / "secret.txt"
    f.write_text(secret)
    os.chmod(f, 0o644)
    os.chmod(tmp_path, 0o755)
    prog = f"""
import os
print(dict(os.environ))
for p in [{str(f)!r}, '/proc/{os.getpid()}/environ', '/proc/1/environ', '/etc/passwd', '/proc/{os.getpid()}/cmdline']:
    try:
        print(open(p, 'rb').read())
    except OSError as e:
        print('denied', p, e)
"""
    r = runner.run_code(prog)
    assert r.status == "ok", r.stderr
    assert secret not in r.stdout and secret not in r.stderr
    assert "root:x:0:0" not in r.stdout
    assert "FLOWRL_TEST_SECRET" not in r.stdout
    assert score(runner, prog + WRONG).score == 0.0


def test_connect_to_local_listener(runner):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    prog = f"""
import socket
for fam, addr in [(socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_INET6, ('::1', {port}))]:
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(addr)
        s.sendall(b'pwned')
        print('CONNECTED')
    except OSError as e:
        print('denied', e)
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b'x', ('127.0.0.1', {port}))
    print('UDP SENT')
except OSError as e:
    print('denied', e)
"""
    r = runner.run_code(prog)
    assert "CONNECTED" not in r.stdout and "UDP SENT" not in r.stdout, r.stdout
    with pytest.raises(BlockingIOError):
        srv.accept()
    assert score(runner, prog + WRONG).score == 0.0
    srv.close()


def test_kill_parent_or_other_process(runner):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        # The victim gets real SIGKILLs. The supervisor, this test process,
        # its process group and pid 1 get signal 0, which asks the kernel
        # for permission without delivering anything: a sandbox that failed
        # must fail this test, not take the machine's init down with it.
        prog = f"""
import os, signal
for target, sig in [({victim.pid}, signal.SIGKILL), ({victim.pid}, signal.SIGTERM), (os.getppid(), 0), ({os.getpid()}, 0), (1, 0)]:
    try:
        os.kill(target, sig)
        print('SIGNALLED', target)
    except OSError as e:
        print('denied', target, e)
try:
    os.killpg({os.getpgid(0)}, 0)
    print('SIGNALLED group')
except OSError as e:
    print('denied group', e)
"""
        r = runner.run_code(prog)
        assert r.status == "ok", r.stderr
        assert victim.poll() is None, "the victim process was killed"
        assert "SIGNALLED" not in r.stdout, r.stdout
        assert score(runner, prog + WRONG).score == 0.0
        assert victim.poll() is None
        assert runner.run_code("print(1)").status == "ok"  # the pool survived
    finally:
        victim.kill()
        victim.wait()


def test_setsid_escape(runner):
    m = marker()
    prog = mark_code(m) + """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
    os._exit(0)
print('parent done')
"""
    r = runner.run_code(prog)
    assert r.status == "ok"
    assert_clean(runner, m)
    assert score(runner, prog + WRONG).score == 0.0
    assert_clean(runner, m)


def test_background_process_left_behind(runner):
    m = marker()
    prog = f"""
import subprocess
subprocess.Popen(['/bin/sh', '-c', 'exec -a {m} sleep 30'], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.Popen(['/bin/sh', '-c', 'sleep 30 # {m}'])
print('spawned')
"""
    r = runner.run_code(prog)
    assert r.status == "ok", r.stderr
    assert_clean(runner, m)
    assert score(runner, prog + WRONG).score == 0.0
    assert_clean(runner, m)


def test_fake_pass_by_printing(runner):
    lines = ['passed', 'ok', json.dumps({"t": 0, "ok": True}), json.dumps({"t": 1, "ok": True}), json.dumps({"done": True})]
    prog = "import os, sys\n"
    prog += f"for line in {lines!r}:\n    print(line)\n    sys.stderr.write(line + '\\n')\n"
    prog += "for fd in range(3, 64):\n    try:\n        os.write(fd, ('\\n'.join(%r) + '\\n').encode())\n    except OSError:\n        pass\n" % (lines,)
    res = score(runner, prog + WRONG)
    assert res.score == 0.0 and res.passed == 0


def test_fake_pass_by_exiting_early(runner):
    for exit_code in ("import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", "raise SystemExit\n"):
        res = score(runner, exit_code + "def f(x):\n    return 2 * x\n")
        assert res.score == 0.0, exit_code
    # exiting from inside the function under test
    res = score(runner, "import os\ndef f(x):\n    os._exit(0)\n")
    assert res.score == 0.0


def test_fake_pass_with_always_equal_object(runner):
    prog = "class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\ndef f(x):\n    return E()\n"
    assert score(runner, prog).score == 0.0
    prog = "class I(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return I(0)\n"
    assert score(runner, prog).score == 0.0
    prog = "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\ndef f(x):\n    return 0\n"
    assert score(runner, prog).score == 0.0


def test_honest_program_still_scores(runner):
    assert score(runner, "def f(x):\n    return 2 * x\n").score == 1.0


def test_no_stray_processes_at_end(runner):
    assert_clean(runner)


def test_no_capabilities_no_device_nodes_no_raised_limits(runner):
    prog = """
import os, resource
caps = {l.split(':')[0]: l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')}
print(caps)
try:
    os.mknod('disk', 0o600 | 0o060000, os.makedev(8, 0))
    print('MKNOD')
except OSError as e:
    print('denied', e)
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print('RAISED')
except (ValueError, OSError) as e:
    print('denied', e)
"""
    r = runner.run_code(prog)
    assert r.status == "ok", r.stderr
    caps = eval(r.stdout.splitlines()[0])  # noqa: S307 - our own dict literal
    assert all(int(v, 16) == 0 for k, v in caps.items() if k != "CapBnd") and int(caps["CapBnd"], 16) == 0, caps
    assert "MKNOD" not in r.stdout and "RAISED" not in r.stdout


def test_tests_never_reach_the_candidates_memory(runner):
    secret = "flowrl-secret-" + uuid.uuid4().hex
    tests = json.dumps({"asserts": f"def check(candidate):\n    assert candidate() == {secret!r}\n", "entry_point": "f"})
    prog = r"""
import os, re
def f():
    pats = re.compile(rb'flowrl-secret-[0-9a-f]{32}')
    for pid in ('self', str(os.getppid()), '1', '2'):
        try:
            maps = open(f'/proc/{pid}/maps').read().splitlines()
            mem = open(f'/proc/{pid}/mem', 'rb')
        except OSError:
            continue
        for line in maps:
            addr, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in addr.split('-'))
            if 'r' not in perms or hi - lo > 1 << 28:
                continue
            try:
                mem.seek(lo)
                m = pats.search(mem.read(hi - lo))
            except (OSError, ValueError, OverflowError):
                continue
            if m:
                return m.group().decode()
    return None
"""
    # several runs, so that a slot's supervisor has held these tests before
    rs = code_results([prog] * 4, [tests] * 4, timeout_s=10.0, runner=runner)
    assert [r.score for r in rs] == [0.0] * 4, [r.detail for r in rs]
    # control: where the program can read its own memory at all (on the bwrap
    # tier the uid switch makes it non-dumpable, so it cannot), the same scan
    # does find a secret that is there
    own = runner.run_code(prog + f"\n_mine = {secret.encode()!r}\nprint(f())\n", timeout_s=10.0)
    readable = runner.run_code("open('/proc/self/mem', 'rb')").status == "ok"
    assert own.stdout.strip() == (secret if readable else "None")
