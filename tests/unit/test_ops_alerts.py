"""Monitoring agrees with the code it watches: every metric the alert rules and the dashboard
name is defined (common/metrics.py, reward_sandbox/metrics.py); promtool checks and unit-tests the
rules, every alert shown both firing and quiet; the dashboard's queries parse; the Prometheus
Operator forms (PodMonitor, PrometheusRule, dashboard ConfigMap) match their sources.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml
from prometheus_client import CollectorRegistry

from common.metrics import ActorMetrics, HubMetrics, LearnerMetrics, WeightSyncMetrics
from tests.unit.ops_helpers import (DASHBOARD, K8S, OVERLAYS, PROM, RULES, RULES_TEST, first_container, get_one,
                                    render, tool, workloads_of, yaml_docs)

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


# -- alert rules: complete, and each shown firing and quiet by a promtool case ---

def test_alert_rules_are_complete():
    alerts = [r for g in yaml_docs(RULES)[0]["groups"] for r in g["rules"]]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names))
    for r in alerts:
        assert r["expr"].strip() and r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
    for wanted in ("FlowRLLearnerStalled", "FlowRLStalenessHigh", "FlowRLRejectedMessages", "FlowRLModeCollapse",
                   "FlowRLWeightSyncSlow", "FlowRLNoConnectedActors", "FlowRLSandboxKillsSpiking"):
        assert wanted in names


def test_every_alert_has_rule_tests():
    alerts = {r["alert"] for g in yaml_docs(RULES)[0]["groups"] for r in g["rules"]}
    fires, quiet = set(), set()
    for case in yaml_docs(RULES_TEST)[0]["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert not alerts - fires, f"alerts never shown to fire: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts never shown to stay quiet: {sorted(alerts - quiet)}"
    for wanted in ("FlowRLLearnerAbsent", "FlowRLActorsBelowExpected", "FlowRLPodRestartLoop"):
        assert wanted in alerts


# -- the dashboard ----------------------------------------------------------------

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


# -- the Prometheus Operator forms (ops/k8s/monitoring) ----------------------------

MONITORING = K8S / "monitoring"


def test_prometheus_rule_holds_the_same_rules():
    rule = get_one(render("monitoring"), "PrometheusRule", "flowrl")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "rerun ops/k8s/monitoring/generate.py"


def test_dashboard_configmap_is_the_dashboard():
    cm = get_one(render("monitoring"), "ConfigMap", "flowrl-dashboard")
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
    pm = get_one(render("monitoring"), "PodMonitor", "flowrl")["spec"]
    [endpoint] = pm["podMetricsEndpoints"]
    relabel = {r.get("targetLabel"): r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "flowrl"
    assert relabel["component"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    for overlay in OVERLAYS:
        docs = render(f"overlays/{overlay}")
        ns = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
        assert ns in pm["namespaceSelector"]["matchNames"], overlay
        for w in workloads_of(docs):
            tmpl = w["spec"]["template"]
            assert tmpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            labels = tmpl["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in pm["selector"]["matchLabels"].items()), w["metadata"]["name"]
            ports = {p["name"]: p["containerPort"] for p in first_container(w).get("ports", [])}
            assert ports[endpoint["port"]] == int(tmpl["metadata"]["annotations"]["prometheus.io/port"])


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
