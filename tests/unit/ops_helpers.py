"""Shared by the ops tests (tests/unit/test_ops_*.py, tests/integration/test_ops_discovery.py):
where the deployment files are, the tools that check them, and each overlay rendered by a real
kubectl (kustomize) exactly as `kubectl apply -k` would send it; the pod command lines as the
kubelet expands them; the CURVE Secrets of ops/README.md projected as the kubelet would.

The tools come from ops/setup_tools.sh: missing, a test skips locally and fails under CI=true.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
K8S = OPS / "k8s"
PROM = OPS / "prometheus"
RULES = PROM / "flowrl-rules.yml"
RULES_TEST = PROM / "flowrl-rules.test.yml"
DASHBOARD = OPS / "grafana" / "flowrl.json"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


# -- tools: found in the venv (ops/setup_tools.sh) or on PATH -------------------

def tool(name: str) -> str:
    """Path of a tool the ops tests run. Missing: skip locally with the fix,
    but fail under CI, where ops/setup_tools.sh (run by ./dev setup) must have
    installed it; a silently skipped check would pass a broken deployment."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if found:
        return found
    msg = f"{name} not installed: run ops/setup_tools.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


# -- overlays, rendered; the pods' command lines --------------------------------

def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.lru_cache(maxsize=None)
def render_text(kdir: str) -> str:
    out = subprocess.run([tool("kubectl"), "kustomize", str(K8S / kdir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(kdir: str) -> list[dict]:
    """The overlay exactly as `kubectl apply -k` would send it."""
    return [d for d in yaml.safe_load_all(render_text(kdir)) if d]


def get_one(docs, kind, name):
    found = [x for x in docs if x["kind"] == kind and x["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name)
    return found[0]


def first_container(obj) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def endpoint_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


WORKLOAD_KINDS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


def workloads_of(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def learner_argv(job: dict, toml: Path) -> list[str]:
    """The learner's command line as the kubelet expands it (Indexed Job, index 0)."""
    name = job["metadata"]["name"]
    env = {"JOB_NAME": name, "JOB_INDEX": "0"}
    argv = []
    for a in first_container(job)["args"][1:]:
        for k, v in env.items():
            a = a.replace(f"$({k})", v)
        argv.append(f"--config={toml}" if a.startswith("--config=") else a)
    return argv


# -- CURVE: the Secrets of ops/README.md, projected as the kubelet would ---------

SECRET_CMD_RE = re.compile(r"kubectl (?:-n \S+ )?create secret generic (\S+)((?:\s*\\?\s*--from-file=\S+)+)")


def documented_secrets() -> dict[str, dict[str, str]]:
    """{secret: {key: path under the `python -m common.keys` folder}} from the
    `kubectl create secret` commands in ops/README.md."""
    found = {}
    for name, files in SECRET_CMD_RE.findall((OPS / "README.md").read_text()):
        entries = {}
        for spec in re.findall(r"--from-file=(\S+)", files):
            key, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
            entries[key] = path.split("flowrl-keys/", 1)[1]
        found[name] = entries
    return found


def curve_volumes(workload: dict) -> dict[str, dict]:
    """{mountPath: secret volume} of the first container's Secret mounts."""
    pod = workload["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in first_container(workload).get("volumeMounts", [])
            if m["name"] in secrets}


def project_secret(secret_vol: dict, keydir: Path, dest: Path) -> Path:
    """What the kubelet writes for this Secret volume, from the documented Secret."""
    secret = documented_secrets().get(secret_vol["secretName"])
    assert secret, f"ops/README.md does not say how to create Secret {secret_vol['secretName']}"
    items = secret_vol.get("items") or [{"key": k, "path": k} for k in secret]
    for it in items:
        assert it["key"] in secret, f"{secret_vol['secretName']} has no key {it['key']}"
        out = dest / it["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((keydir / secret[it["key"]]).read_bytes())
    return dest


def with_curve(args: list[str], workload: dict, tmp_path: Path) -> list[str]:
    """args with --curve-dir pointed at the projected Secret mount (checked to be one)."""
    out = []
    for a in args:
        if a.startswith("--curve-dir="):
            path = a.split("=", 1)[1]
            vols = curve_volumes(workload)
            assert path in vols, f"{workload['metadata']['name']}: --curve-dir={path} is no Secret mount"
            from common import keys
            keydir = tmp_path / "flowrl-keys"
            if not keydir.exists():
                keys.write(keydir)
            a = "--curve-dir=" + str(project_secret(vols[path], keydir, tmp_path / workload["metadata"]["name"]))
        out.append(a)
    return out


def actor_seeds(actors: dict, n: int) -> list[int]:
    from actors.__main__ import parse_args as actor_args
    args = [a for a in first_container(actors)["args"][1:] if not a.startswith("--curve-dir=")]  # keys: checked apart
    return [actor_args([a.replace("$(ACTOR_INDEX)", str(i)) for a in args]).seed for i in range(n)]
