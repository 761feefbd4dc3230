"""Does Prometheus really scrape the pods the overlays deploy?

The test that issue 11's bug (pod templates without the part-of label, so the
in-cluster scrape config kept 0 of 20 targets) would have failed. It renders
every overlay with kubectl, makes the pods its workloads would start (their
template labels and annotations plus what the controllers add), and gives them
to a real Prometheus (Debian's) through file-based discovery, carrying the
`__meta_kubernetes_pod_*` labels its Kubernetes pod discovery would attach:
one target per declared container port, as pod discovery does. The relabel
rules are ops/prometheus/prometheus.yml's, verbatim: only the discovery
mechanism is swapped (Debian builds Prometheus without Kubernetes discovery).

Each pod's metrics endpoint is a live server (the roles' own MetricsServer) on
its own loopback address (127.0.0.x) at the pod's annotated port, so a target
that relabelling points at the wrong port or pod is down or serves another
pod's series. Asserted through Prometheus's HTTP API: every role's pods are
kept, one target each, and up; a foreign annotated pod and a finished learner
and actor are dropped; the alert rules load.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from common.metrics import MetricsServer
from tests.integration.helpers import free_ports
from tests.unit.ops_helpers import OVERLAYS, PROM, RULES, render, tool

WORKLOADS = ("Deployment", "Job", "StatefulSet")
READY_TIMEOUT_S = 60


def _san(name: str) -> str:
    """Prometheus's label-name sanitising of Kubernetes label/annotation keys."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class Pod:
    """One pod as the API server would hold it, and its stand-in endpoint."""

    def __init__(self, name: str, namespace: str, ip: str, template: dict, controller: tuple[str, str],
                 extra_labels: dict, extra_annotations: dict, phase: str = "Running"):
        self.name, self.namespace, self.ip, self.phase = name, namespace, ip, phase
        self.template, self.controller = template, controller
        meta = template["metadata"]
        self.labels = {**meta.get("labels", {}), **extra_labels}
        self.annotations = {**meta.get("annotations", {}), **extra_annotations}
        self.server: MetricsServer | None = None

    @property
    def metrics_port(self) -> int:
        return int(self.annotations["prometheus.io/port"])

    def serve(self) -> None:
        # Stands in for the pod's /metrics: a series naming the pod it came
        # from, so a target relabelled onto another pod's address shows up.
        reg = CollectorRegistry()
        Gauge("discovery_probe_pod_info", "Which pod served this scrape", ["served_pod"], registry=reg).labels(
            self.name).set(1)
        try:
            self.server = MetricsServer(reg, self.metrics_port, lambda: {}, host=self.ip)
        except OSError as e:
            pytest.fail(f"cannot serve {self.name} on {self.ip}:{self.metrics_port} (port taken on all addresses?): {e}")

    def sd_targets(self) -> list[dict]:
        """What Prometheus's Kubernetes pod discovery yields for this pod."""
        common = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.name,
            "__meta_kubernetes_pod_ip": self.ip,
            "__meta_kubernetes_pod_ready": "true",
            "__meta_kubernetes_pod_phase": self.phase,
            "__meta_kubernetes_pod_node_name": "node-1",
            "__meta_kubernetes_pod_host_ip": "127.0.0.1",
            "__meta_kubernetes_pod_uid": str(uuid.uuid4()),
            "__meta_kubernetes_pod_controller_kind": self.controller[0],
            "__meta_kubernetes_pod_controller_name": self.controller[1],
        }
        for k, v in self.labels.items():
            common[f"__meta_kubernetes_pod_label_{_san(k)}"] = str(v)
            common[f"__meta_kubernetes_pod_labelpresent_{_san(k)}"] = "true"
        for k, v in self.annotations.items():
            common[f"__meta_kubernetes_pod_annotation_{_san(k)}"] = str(v)
            common[f"__meta_kubernetes_pod_annotationpresent_{_san(k)}"] = "true"
        targets = []
        for c in self.template["spec"]["containers"]:
            cl = {**common, "__meta_kubernetes_pod_container_name": c["name"],
                  "__meta_kubernetes_pod_container_image": c["image"],
                  "__meta_kubernetes_pod_container_init": "false"}
            ports = c.get("ports") or []
            if not ports:  # a container without ports: one target on the bare IP
                targets.append({"targets": [self.ip], "labels": cl})
            for p in ports:
                targets.append({"targets": [f"{self.ip}:{p['containerPort']}"], "labels": {
                    **cl, "__meta_kubernetes_pod_container_port_name": p.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(p["containerPort"]),
                    "__meta_kubernetes_pod_container_port_protocol": p.get("protocol", "TCP")}})
        return targets


def _rand() -> str:
    return uuid.uuid4().hex[:5]


def _pods_of(workload: dict, next_ip) -> list[Pod]:
    """The pods a workload's controller would create, with the labels (and,
    for an Indexed Job, the annotation) the controller adds to the template."""
    kind, name = workload["kind"], workload["metadata"]["name"]
    ns, tmpl = workload["metadata"]["namespace"], workload["spec"]["template"]
    if kind == "Job":
        # Indexed (learner and actors): one pod per index up to parallelism
        assert workload["spec"]["completionMode"] == "Indexed", name
        uid = str(uuid.uuid4())
        pods = []
        for i in range(workload["spec"].get("parallelism", 1)):
            labels = {"batch.kubernetes.io/job-name": name, "job-name": name,
                      "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                      "batch.kubernetes.io/job-completion-index": str(i)}
            pods.append(Pod(f"{name}-{i}-{_rand()}", ns, next_ip(), tmpl, ("Job", name), labels,
                            {"batch.kubernetes.io/job-completion-index": str(i)}))
        return pods
    if kind == "StatefulSet":
        return [Pod(f"{name}-{i}", ns, next_ip(), tmpl, ("StatefulSet", name),
                    {"statefulset.kubernetes.io/pod-name": f"{name}-{i}"}, {})
                for i in range(workload["spec"].get("replicas", 1))]
    rs_hash = uuid.uuid4().hex[:10]
    return [Pod(f"{name}-{rs_hash}-{_rand()}", ns, next_ip(), tmpl, ("ReplicaSet", f"{name}-{rs_hash}"),
                {"pod-template-hash": rs_hash}, {})
            for _ in range(workload["spec"].get("replicas", 1))]


def _scrape_config(targets_file: Path) -> dict:
    """prometheus.yml with its relabelling untouched and file_sd for kubernetes_sd."""
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "flowrl"]
    sd = job.pop("kubernetes_sd_configs")
    assert sd == [{"role": "pod"}], "the test models pod discovery only"
    assert not [k for k in job if k.endswith("_sd_configs")]
    job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "5s"}]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)], "scrape_configs": [job]}


def _api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def cluster():
    """The pods of every overlay, plus two that must not be scraped."""
    counter = iter(range(2, 250))  # 127.0.0.1 left alone: local services bind it

    def next_ip() -> str:
        return f"127.0.0.{next(counter)}"

    kept, dropped = [], []
    for overlay in OVERLAYS:
        docs = render(f"overlays/{overlay}")
        workloads = [d for d in docs if d["kind"] in WORKLOADS]
        scraped = [w for w in workloads if w["spec"]["template"]["metadata"].get("annotations", {})
                   .get("prometheus.io/scrape") == "true"]
        assert {w["metadata"]["name"] for w in scraped} == {"flowrl-learner", "flowrl-actors", "flowrl-sandbox"}
        for w in scraped:
            kept += _pods_of(w, next_ip)
        ns = scraped[0]["metadata"]["namespace"]
        # Another team's annotated pod in the same namespace: its own job's.
        foreign = {"metadata": {"labels": {"app": "web"}, "annotations": {
            "prometheus.io/scrape": "true", "prometheus.io/port": "8080"}},
            "spec": {"containers": [{"name": "web", "image": "web:1.0", "ports": [{"containerPort": 8080}]}]}}
        dropped.append(Pod(f"web-{_rand()}", ns, next_ip(), foreign, ("ReplicaSet", "web-1"), {}, {}))
        # A learner and an actor from a finished run (their Jobs complete, the
        # pods Succeeded): nothing to scrape.
        for name in ("flowrl-learner", "flowrl-actors"):
            [job] = [w for w in scraped if w["kind"] == "Job" and w["metadata"]["name"] == name]
            done = _pods_of(job, next_ip)[0]
            done.name, done.phase = f"{name}-0-{_rand()}", "Succeeded"
            dropped.append(done)
    pods = kept + dropped
    try:
        for p in pods:
            p.serve()
        yield kept, dropped
    finally:
        # In parallel: each close waits out its server's 0.5 s poll loop.
        servers = [p.server for p in pods if p.server is not None]
        with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
            list(pool.map(MetricsServer.close, servers))


def test_prometheus_keeps_and_scrapes_every_role(cluster, tmp_path):
    kept, dropped = cluster
    prometheus = tool("prometheus")
    targets_file = tmp_path / "pods.json"
    targets_file.write_text(json.dumps([t for p in kept + dropped for t in p.sd_targets()]))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_scrape_config(targets_file)))
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    with open(log, "w") as log_f:
        proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=log_f, stderr=subprocess.STDOUT)
    try:
        active = _wait_all_up(base, proc, log, len(kept))
        _check(base, active, kept, dropped)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_all_up(base: str, proc: subprocess.Popen, log: Path, n: int) -> list[dict]:
    """Active flowrl targets once n are up, or the last listing at the deadline."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    active: list[dict] = []
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{log.read_text()}"
        try:
            data = _api(base, "/api/v1/targets", state="active")
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
            continue
        active = [t for t in data["activeTargets"] if t["scrapePool"] == "flowrl"]
        if len(active) >= n and all(t["health"] == "up" for t in active):
            break
        time.sleep(0.5)
    return active


def _check(base: str, active: list[dict], kept: list[Pod], dropped: list[Pod]) -> None:
    by_pod = {t["labels"].get("pod"): t for t in active}
    want = {p.name: p for p in kept}
    missing = sorted(set(want) - set(by_pod))
    assert not missing, f"pods not kept by the scrape config: {missing}"
    assert len(active) == len(kept), "one target per pod (the per-port targets must merge)"
    extra = sorted(set(by_pod) - set(want))
    assert not extra, f"targets kept that must be dropped: {extra}"
    for name, t in by_pod.items():
        p = want[name]
        assert t["health"] == "up", f"{name}: {t['health']} {t.get('lastError')}"
        assert t["scrapeUrl"] == f"http://{p.ip}:{p.metrics_port}/metrics", name
        labels = t["labels"]
        assert labels["job"] == "flowrl" and labels["namespace"] == p.namespace, labels
        assert labels["component"] == p.labels["app.kubernetes.io/component"], labels
    # every role of every overlay, with its replica count
    roles = {}
    for p in kept:
        key = (p.namespace, p.labels["app.kubernetes.io/component"])
        roles[key] = roles.get(key, 0) + 1
    assert {ns for ns, _ in roles} == {p.namespace for p in kept} and len(roles) == 3 * len(OVERLAYS)
    assert {c for _, c in roles} == {"learner", "actor", "sandbox"}

    # the dropped pods were discovered (so dropping them was the rules' doing)
    data = _api(base, "/api/v1/targets", state="dropped")
    dropped_names = {t["discoveredLabels"].get("__meta_kubernetes_pod_name") for t in data["droppedTargets"]}
    for p in dropped:
        assert p.name in dropped_names, p.name

    # each target's series came from that pod's own endpoint
    deadline = time.monotonic() + 15
    while True:
        series = _api(base, "/api/v1/query", query="discovery_probe_pod_info")["result"]
        if len(series) >= len(kept) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    served = {s["metric"]["pod"]: s["metric"]["served_pod"] for s in series}
    assert served == {p.name: p.name for p in kept}

    # and the alert rules load in this Prometheus too
    groups = _api(base, "/api/v1/rules", type="alert")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    wanted = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert loaded == wanted
