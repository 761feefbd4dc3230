"""Lifecycles: the learner is a resumable Job and the actors an elastic Indexed Job within the
learner's seats, with distinct seeds per pod. Each Job's podFailurePolicy, evaluated as the Job
controller does, against the exit codes the code uses (common/exitcodes.py): a SIGTERM'd stop
or a disruption makes a new pod without counting a failure, "the run is over" (exit 0)
completes, a crash counts, an actor that gave up on the learner fails its index alone.
"""
from __future__ import annotations

import tomllib

import pytest

from common import exitcodes
from tests.unit.ops_helpers import (OVERLAYS, actor_seeds, first_container, get_one, learner_argv, render,
                                    with_curve)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_learner_job_lifecycle(overlay):
    """A run ends: the learner is a Job that completes on success and makes a
    new pod on failure (restartPolicy Never, as podFailurePolicy requires),
    which resumes from run_dir on a claim that outlives the pod; it is
    protected from voluntary eviction, outranks the rest, and has time for a
    final checkpoint on SIGTERM."""
    docs = render(f"overlays/{overlay}")
    assert not [d for d in docs if d["kind"] == "StatefulSet"], "a StatefulSet restarts a finished learner"
    job = get_one(docs, "Job", "flowrl-learner")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (1, 1, "Indexed")
    assert 1 <= spec["backoffLimit"] <= 10
    assert pod["restartPolicy"] == "Never"
    assert "--resume=auto" in first_container(job)["args"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    pdb = get_one(docs, "PodDisruptionBudget", "flowrl-learner")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    prio = get_one(docs, "PriorityClass", pod["priorityClassName"])
    assert prio["value"] > 0 and not prio.get("globalDefault")
    # actors: their own test (test_actors_job_lifecycle)
    assert checkpoint_every_of(docs) > 0, "learner.toml: checkpoint_every bounds the steps a crash loses"
    # every failure or stop is a new pod: run_dir must outlive it
    runs = next(v for v in pod["volumes"] if v["name"] == "runs")
    assert set(runs) == {"name", "persistentVolumeClaim"}, runs
    assert get_one(docs, "PersistentVolumeClaim", runs["persistentVolumeClaim"]["claimName"])


def checkpoint_every_of(docs) -> int:
    return tomllib.loads(get_one(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"]).get(
        "checkpoint_every", 0)


def _learner_knows(flag: str, capsys) -> bool:
    from learner.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    return flag in capsys.readouterr().out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_learner_job_resumes(overlay, tmp_path, capsys):
    """The Job's learner resumes: the parser takes `--resume=auto` (the
    learner's own flag, not a --set), and run_dir, where checkpoints go, is on
    the `runs` volume, not the read-only root or a cache."""
    docs = render(f"overlays/{overlay}")
    job = get_one(docs, "Job", "flowrl-learner")
    assert _learner_knows("--resume", capsys), "python -m learner has no --resume"
    from learner.__main__ import parse_args
    toml = tmp_path / "learner.toml"
    toml.write_text(get_one(docs, "ConfigMap", "flowrl-learner-config")["data"]["learner.toml"])
    cfg, _ = parse_args(with_curve(learner_argv(job, toml), job, tmp_path))
    assert cfg.resume == "auto"
    runs = next(m["mountPath"] for m in first_container(job)["volumeMounts"] if m["name"] == "runs")
    assert cfg.run_dir.startswith(runs.rstrip("/") + "/"), f"run_dir {cfg.run_dir} is not on the runs volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_actors_job_lifecycle(overlay):
    """Actors stop when the run is done and scale while it goes on: an
    Indexed Job (each index complete when its launcher exits 0, the run over)
    with completions = parallelism (elastic: patched together), never a
    Deployment (it would restart actors that exited 0) nor the work-queue
    form (one exit 0 there stops all pod creation). A failed pod is replaced
    (restartPolicy Never, as podFailurePolicy requires); an index that keeps
    failing is given up on alone (backoffLimitPerIndex)."""
    docs = render(f"overlays/{overlay}")
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "flowrl-actors"]
    actors = get_one(docs, "Job", "flowrl-actors")
    spec, pod = actors["spec"], actors["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec.get("completions") is not None and spec["completions"] == spec["parallelism"] >= 1
    assert pod["restartPolicy"] == "Never"
    assert spec["backoffLimit"] >= 3 * spec["parallelism"], "backoffLimit counts every actor's failures, all run"
    assert 1 <= spec["backoffLimitPerIndex"] < spec["backoffLimit"]
    assert not spec.get("activeDeadlineSeconds"), "a run's length is not known in advance"
    assert pod["terminationGracePeriodSeconds"] >= 30, "time to hand leases back on SIGTERM"
    # the completion index reaches the container, and gives every pod its own seeds
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in first_container(actors)["env"]}
    assert env["ACTOR_INDEX"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    seeds = actor_seeds(actors, 32)
    assert len(set(seeds)) == len(seeds), "actor pods share sampling seeds"
    assert min(abs(x - y) for x in seeds for y in seeds if x != y) >= 10 ** 6, "seed streams overlap"


def test_seed_check_catches_a_shared_seed():
    actors = {"spec": {"template": {"spec": {"containers": [{"args": ["actors", "--seed=7"]}]}}}}
    assert len(set(actor_seeds(actors, 4))) == 1


# -- podFailurePolicy, evaluated as the Job controller does ------------------------

def pod_failure_action(job: dict, exit_codes: dict[str, int] | None = None, conditions: tuple = ()) -> str:
    """What the Job controller does with a failed pod of ``job`` whose containers terminated
    with ``exit_codes`` ({container: code}) and whose status has ``conditions`` (types, all
    status "True"): the action of the first matching rule, else "Count" (k8s
    pkg/controller/job/pod_failure_policy.go: an exit code of 0 never matches; a rule
    without containerName looks at every container; NotIn matches a non-zero code outside
    the values)."""
    policy = job["spec"].get("podFailurePolicy")
    if policy is None:
        return "Count"
    for rule in policy["rules"]:
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            codes = [c for name, c in (exit_codes or {}).items()
                     if c != 0 and req.get("containerName") in (None, name)]
            if any((c in req["values"]) == (req["operator"] == "In") for c in codes):
                return rule["action"]
        else:
            if any(pat["type"] in conditions and pat.get("status", "True") == "True" for pat in rule["onPodConditions"]):
                return rule["action"]
    return "Count"


def test_pod_failure_action_follows_the_controller():
    job = {"spec": {"podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [7]}},
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [7]}}]}}}
    assert pod_failure_action(job, {"main": 42}) == "FailJob"
    assert pod_failure_action(job, {"sidecar": 42}) == "Count"  # containerName restricts the rule (NotIn 7 matches)
    assert pod_failure_action(job, {"main": 42}, ("DisruptionTarget",)) == "FailJob"  # first match wins
    assert pod_failure_action(job, {"main": 137}, ("DisruptionTarget",)) == "Ignore"
    assert pod_failure_action(job, {"main": 7}) == "Ignore"
    assert pod_failure_action(job, {"main": 0}) == "Count"  # 0 matches no rule: the default
    assert pod_failure_action({"spec": {}}, {"main": 143}) == "Count"


# A SIGKILL at the end of the grace period, an OOM kill, a crash, a bad config.
KILLED, CRASHED = 128 + 9, 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_learner_pod_failure_policy(overlay):
    """A learner stopped by SIGTERM checkpointed: its pod is replaced and resumes without
    counting against backoffLimit; so is one preempted or evicted, even if the grace
    period ran out. A crash, an OOM kill, a liveness kill (SIGKILL) and a bad config count."""
    job = get_one(render(f"overlays/{overlay}"), "Job", "flowrl-learner")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy Never"
    c = first_container(job)["name"]
    assert pod_failure_action(job, {c: exitcodes.TERMINATED}) == "Ignore"
    assert pod_failure_action(job, {c: KILLED}, ("DisruptionTarget",)) == "Ignore"
    assert pod_failure_action(job, {c: exitcodes.TERMINATED}, ("DisruptionTarget",)) == "Ignore"
    for code in (CRASHED, exitcodes.ERROR, KILLED, exitcodes.INTERRUPTED):
        assert pod_failure_action(job, {c: code}) == "Count", code
    assert pod_failure_action(job, {"other": exitcodes.TERMINATED}) == "Count", "rules must name the learner container"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_actors_pod_failure_policy(overlay):
    """An actor stopped by SIGTERM (eviction, `kubectl delete pod`) or disrupted is replaced
    without counting; one that gave up on the learner fails its index alone (the run is over
    or the learner is gone: retrying would wait give_up_after_s again); crashes count."""
    job = get_one(render(f"overlays/{overlay}"), "Job", "flowrl-actors")
    spec = job["spec"]
    c = first_container(job)["name"]
    assert pod_failure_action(job, {c: exitcodes.TERMINATED}) == "Ignore"
    assert pod_failure_action(job, {c: KILLED}, ("DisruptionTarget",)) == "Ignore"
    assert pod_failure_action(job, {c: exitcodes.LEARNER_GONE}) == "FailIndex"
    for code in (CRASHED, exitcodes.ERROR, KILLED):
        assert pod_failure_action(job, {c: code}) == "Count", code
    # the API server's rules the offline schemas do not hold
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    actions = {r["action"] for r in spec["podFailurePolicy"]["rules"]}
    assert "FailIndex" not in actions or spec.get("backoffLimitPerIndex") is not None
    for rule in spec["podFailurePolicy"]["rules"]:
        req = rule.get("onExitCodes")
        if req:
            assert req["values"] == sorted(set(req["values"])) and 0 not in req["values"], rule


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_actors_give_up_after_a_learner_could_come_back(overlay):
    """Actors give up on a silent learner (a pod started after the run is over must not hold
    its GPU forever), but only after a replaced learner could be back: the old pod's grace
    period, then the new one's startup (model load) within its startupProbe budget."""
    from actors.__main__ import parse_args as actor_args

    docs = render(f"overlays/{overlay}")
    actors, learner = get_one(docs, "Job", "flowrl-actors"), get_one(docs, "Job", "flowrl-learner")
    args = [a.replace("$(ACTOR_INDEX)", "0") for a in first_container(actors)["args"][1:]
            if not a.startswith("--curve-dir=")]
    give_up = actor_args(args).give_up_after_s
    probe = first_container(learner)["startupProbe"]
    comeback = (learner["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                + probe["periodSeconds"] * probe["failureThreshold"])
    assert give_up > comeback, f"actors give up after {give_up} s; a replaced learner may take {comeback} s"
    assert give_up <= 4 * 3600, "a stranded actor holds its GPU this long"
