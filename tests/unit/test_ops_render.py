"""Every overlay renders (kubectl kustomize) and validates strictly against the Kubernetes API
schemas (kubernetes-validate, offline); its images are pinned; each overlay's learner config and
command lines pass the roles' own parsers and validation, with the CURVE Secrets (as ops/README.md
creates them) projected into the mounts, and the roles agree on ports, names and the model.
"""
from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.unit.ops_helpers import (K8S, OPS, OVERLAYS, ROOT, endpoint_port, first_container, get_one, learner_argv,
                                    render, tool, with_curve, workloads_of, yaml_docs)

# -- YAML and kustomizations ------------------------------------------------------

@pytest.mark.parametrize("path", sorted(OPS.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(OPS)))
def test_yaml_parses(path):
    docs = yaml_docs(path)
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


def test_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="setup_tools"):
        tool("flowrl-no-such-tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        tool("flowrl-no-such-tool")


# -- the roles' own parsers on each overlay's command lines ----------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_roles_agree(overlay, tmp_path):
    from actors.__main__ import parse_args as actor_args
    from learner.__main__ import parse_args as learner_args

    docs = render(f"overlays/{overlay}")
    job, actors = get_one(docs, "Job", "flowrl-learner"), get_one(docs, "Job", "flowrl-actors")
    sandbox = get_one(docs, "Deployment", "flowrl-sandbox")
    toml = tmp_path / "learner.toml"
    toml.write_text(get_one(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"])

    # learner: its own parser and validate(), with the pod's variables filled
    # in and the CURVE Secret projected where it is mounted
    lc = first_container(job)
    assert lc["args"][0] == "learner"
    cfg, gpus = learner_args(with_curve(learner_argv(job, toml), job, tmp_path))  # ConfigError if refused
    # the advertised name is the Indexed Job pod's DNS name: hostname.subdomain
    pod_spec = job["spec"]["template"]["spec"]
    assert cfg.advertise_host == f"{job['metadata']['name']}-0.{pod_spec['subdomain']}"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in lc["env"] if "valueFrom" in e}
    assert env["JOB_NAME"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["JOB_INDEX"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"

    # one seat per actor pod; the Job runs between min_actors and the seats
    a = actor_args(with_curve([x.replace("$(ACTOR_INDEX)", "0") for x in first_container(actors)["args"][1:]],
                               actors, tmp_path))
    a.validate()
    assert a.n == 1
    parallelism = actors["spec"]["parallelism"]
    assert cfg.min_actors <= parallelism <= cfg.actors, \
        f"actors Job parallelism {parallelism} outside [min_actors {cfg.min_actors}, seats {cfg.actors}]"
    # waits for the learner with backoff: a long hello timeout would only delay a retry
    assert a.connect_timeout_s <= 60
    assert a.model == cfg.model
    assert endpoint_port(a.learner) == endpoint_port(cfg.bind)
    assert a.learner.split("//")[1].split(":")[0] == pod_spec["subdomain"]
    if gpus:
        gpu = lc["resources"]["limits"].get("nvidia.com/gpu")
        assert int(gpu) == gpus, "learner --gpus must match its GPU limit"
        assert a.engine == "vllm" and int(first_container(actors)["resources"]["limits"]["nvidia.com/gpu"]) == 1
        assert a.device.startswith("cuda"), "a GPU actor on device cpu: vLLM's CUDA build refuses it at start"
    else:
        assert a.device == "cpu"

    # the Service exposes what the learner binds
    svc = get_one(docs, "Service", "flowrl-learner")
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == pod_spec["subdomain"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    ports = {p["port"] for p in svc["spec"]["ports"]}
    assert {endpoint_port(cfg.bind), endpoint_port(cfg.pub_bind), cfg.weight_port, cfg.metrics_port} <= ports

    # the actors' reward endpoint is the sandbox Service on the port it binds
    sc = first_container(sandbox)
    bind = next(x.split("=", 1)[1] for x in sc["args"] if x.startswith("--bind="))
    assert a.reward_endpoint == f"tcp://flowrl-sandbox:{endpoint_port(bind)}"
    assert endpoint_port(bind) in {p["port"] for p in get_one(docs, "Service", "flowrl-sandbox")["spec"]["ports"]}

    # Prometheus scrapes the port each role serves /metrics on
    sandbox_metrics = int(next(x.split("=", 1)[1] for x in sc["args"] if x.startswith("--metrics-port=")))
    out = subprocess.run([sys.executable, "-m", "reward_sandbox", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    for flag in {x.split("=", 1)[0] for x in sc["args"][1:]}:
        assert flag in out.stdout, f"reward_sandbox has no {flag}"
    for obj, port in ((job, cfg.metrics_port), (actors, a.metrics_port), (sandbox, sandbox_metrics)):
        ann = obj["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port


# -- images -----------------------------------------------------------------------

def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_pinned(overlay):
    """No floating tag: a digest, or `<project version>-<flavour>` for ours."""
    docs = render(f"overlays/{overlay}")
    images = [c["image"] for w in workloads_of(docs) for c in w["spec"]["template"]["spec"]["containers"]]
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

    docs = render(kdir)
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
    job = get_one(render("overlays/cpu-demo"), "Job", "flowrl-learner")
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)
