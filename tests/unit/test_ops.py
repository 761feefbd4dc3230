"""The deployment files (ops/, Dockerfile) agree with the code they deploy.

Metric names in alerts and dashboard exist; manifests parse; every overlay's
learner config and command lines pass the roles' own parsers and validation;
the weight group's fixed membership matches the actor replicas; promtool
checks and unit-tests the rules where it is installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
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
        if "apiVersion" in doc and doc.get("kind") != "Kustomization":
            assert doc["metadata"]["name"], path


@pytest.mark.parametrize("kdir", ["base"] + [f"overlays/{o}" for o in OVERLAYS])
def test_kustomization_references_exist(kdir):
    d = K8S / kdir
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    refs = list(k.get("resources", []))
    refs += [p["path"] for p in k.get("patches", []) if "path" in p]
    refs += [f for g in k.get("configMapGenerator", []) for f in g.get("files", [])]
    assert refs
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


# -- overlays: config and command lines through the roles' own parsers ----------

def _render(kdir: str) -> list[dict]:
    """The overlay as kustomize builds it; a minimal stand-in when no kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(K8S / kdir)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    return _render_minimal(K8S / kdir)


def _render_minimal(d: Path) -> list[dict]:
    """Base resources + this repo's overlay idioms: replace-ConfigMap, replicas,
    strategic-merge patches of container args and resources, JSON patches that
    append args. Anything else in a patch is ignored here, not by kustomize."""
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    docs = []
    for res in k.get("resources", []):
        p = d / res
        docs += _render_minimal(p) if p.is_dir() else _yaml_docs(p)
    by = {(x["kind"], x["metadata"]["name"]): x for x in docs}
    for g in k.get("configMapGenerator", []):
        cm = by.setdefault(("ConfigMap", g["name"]), {"kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": {}})
        cm.setdefault("data", {}).update({f: (d / f).read_text() for f in g["files"]})
        docs.append(cm) if cm not in docs else None
    for r in k.get("replicas", []):
        for kind in ("Deployment", "StatefulSet"):
            if (kind, r["name"]) in by:
                by[(kind, r["name"])]["spec"]["replicas"] = r["count"]
    for patch in k.get("patches", []):
        if "path" in patch:
            for pd in _yaml_docs(d / patch["path"]):
                target = by[(pd["kind"], pd["metadata"]["name"])]
                for pc in pd["spec"]["template"]["spec"].get("containers", []):
                    for c in target["spec"]["template"]["spec"]["containers"]:
                        if c["name"] == pc["name"]:
                            c["args"] = list(pc.get("args", c["args"]))
                            for k, v in pc.get("resources", {}).items():
                                c.setdefault("resources", {}).setdefault(k, {}).update(v)
        else:
            target = by[(patch["target"]["kind"], patch["target"]["name"])]
            for op in yaml.safe_load(patch["patch"]):
                assert op["op"] == "add" and op["path"].endswith("/args/-"), op
                target["spec"]["template"]["spec"]["containers"][0]["args"].append(op["value"])
    return docs


def _get(docs, kind, name):
    found = [x for x in docs if x["kind"] == kind and x["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name)
    return found[0]


def _container(obj) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_roles_agree(overlay, tmp_path):
    from actors.__main__ import parse_args as actor_args
    from learner.__main__ import parse_args as learner_args

    docs = _render(f"overlays/{overlay}")
    sts, actors = _get(docs, "StatefulSet", "flowrl-learner"), _get(docs, "Deployment", "flowrl-actors")
    sandbox = _get(docs, "Deployment", "flowrl-sandbox")
    toml = tmp_path / "learner.toml"
    toml.write_text(_get(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"])

    # learner: its own parser and validate(), with the pod's variables filled in
    lc = _container(sts)
    assert lc["args"][0] == "learner"
    pod = f"{sts['metadata']['name']}-0"
    argv = [a.replace("$(POD_NAME)", pod) for a in lc["args"][1:]]
    argv = [f"--config={toml}" if a.startswith("--config=") else a for a in argv]
    cfg, gpus = learner_args(argv)  # raises ConfigError on a bad field or combination
    assert cfg.advertise_host == f"{pod}.{sts['spec']['serviceName']}"
    assert sts["spec"]["replicas"] == 1

    # fixed weight-group membership: one seat per actor pod
    a = actor_args(_container(actors)["args"][1:])
    a.validate()
    assert a.n == 1
    assert cfg.actors == actors["spec"]["replicas"], "learner.toml `actors` must equal the actor replicas"
    assert a.model == cfg.model
    assert _port(a.learner) == _port(cfg.bind)
    assert a.learner.split("//")[1].split(":")[0] == sts["spec"]["serviceName"]
    if gpus:
        gpu = lc["resources"]["limits"].get("nvidia.com/gpu")
        assert int(gpu) == gpus, "learner --gpus must match its GPU limit"
        assert a.engine == "vllm" and int(_container(actors)["resources"]["limits"]["nvidia.com/gpu"]) == 1

    # the Service exposes what the learner binds
    svc = _get(docs, "Service", "flowrl-learner")
    assert svc["spec"]["clusterIP"] == "None"
    ports = {p["port"] for p in svc["spec"]["ports"]}
    assert {_port(cfg.bind), _port(cfg.pub_bind), cfg.weight_port, cfg.metrics_port} <= ports

    # the actors' reward endpoint is the sandbox Service on the port it binds
    sc = _container(sandbox)
    bind = next(x.split("=", 1)[1] for x in sc["args"] if x.startswith("--bind="))
    assert a.reward_endpoint == f"tcp://flowrl-sandbox:{_port(bind)}"
    assert _port(bind) in {p["port"] for p in _get(docs, "Service", "flowrl-sandbox")["spec"]["ports"]}

    # Prometheus scrapes the port each role serves /metrics on
    sandbox_metrics = int(next(x.split("=", 1)[1] for x in sc["args"] if x.startswith("--metrics-port=")))
    for obj, port in ((sts, cfg.metrics_port), (actors, a.metrics_port), (sandbox, sandbox_metrics)):
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
    assert 'ENTRYPOINT ["python", "-m"]' in lines
    allowed = (ROOT / ".dockerignore").read_text().split()
    for pkg in ("actors", "learner", "common", "reward_sandbox"):
        assert f"!{pkg}/" in allowed, f".dockerignore leaves {pkg} out of the image"


# -- promtool (Debian package `prometheus`) ------------------------------------------

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")


def _promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=PROM)


@promtool
def test_promtool_rules_check_and_unit_tests():
    for args in (("check", "rules", RULES.name), ("test", "rules", RULES_TEST.name),
                 ("check", "config", "prometheus-local.yml")):
        out = _promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr


@promtool
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
