"""HyperPodJobBackend against a fake Kubernetes API server, through the real kubernetes client."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.airflow_task import inside_a_task
from fakes.kube_api import FakeKube, fake_kube  # noqa: F401
from tuneloop.jobs import make_backend
from tuneloop.jobs.base import (
    JobKind,
    JobNotFoundError,
    JobSpec,
    JobState,
    TransientJobError,
    UserJobError,
)
from tuneloop.jobs.hyperpod import HyperPodJobBackend
from tuneloop.jobs.hyperpod_objects import build_job_objects
from tuneloop.recipes.catalog import Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "nova" / "nova-2-lite"
OUTPUT = "s3://bucket/outputs"


def _recipe(template: str, **overrides: Any) -> dict[str, Any]:
    context = RecipeContext(platform=Platform.HYPERPOD, template=True)
    return render_recipe(RECIPES / template, overrides, context=context).data


def _spec(name: str = "camp-r1-sft-0123456789", **changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "name": name,
        "kind": JobKind.TRAIN,
        "method": "sft",
        "recipe": _recipe("sft-full.yaml", **{"run.replicas": 4}),
        "inputs": {"train": "s3://bucket/train.jsonl"},
        "output_uri": OUTPUT,
        "labels": {"campaign": "camp", "round": "1", "stage": "sft"},
    }
    fields.update(changes)
    return JobSpec(**fields)


def _rft_spec(name: str = "camp-r1-rft-0123456789", **overrides: Any) -> JobSpec:
    recipe = _recipe(
        "rft-full.yaml",
        **{"run.replicas": 2, "run.generation_replicas": 3, "run.rollout_worker_replicas": 2},
        **overrides,
    )
    return _spec(
        name,
        method="rft",
        recipe=recipe,
        inputs={"train": "s3://bucket/prompts.jsonl", "reward": "arn:aws:lambda:x:SageMaker-r"},
        labels={"campaign": "camp", "round": "1", "stage": "rft"},
    )


@pytest.fixture
def backend(fake_kube: FakeKube) -> HyperPodJobBackend:  # noqa: F811
    return HyperPodJobBackend(
        cluster="nova-hp",
        region="us-east-1",
        kubeconfig=str(fake_kube.kubeconfig),
        max_restarts=3,
        log_lines=5,
    )


def _start_pods(kube: FakeKube, job: str, workers: int = 0) -> None:
    kube.add_pod(f"{job}-master-0", job=job)
    for i in range(workers):
        kube.add_pod(f"{job}-worker-{i}", job=job, replica_type="worker")


# --- submit --------------------------------------------------------------------------------


def test_submit_creates_one_configmap_and_one_pytorchjob(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    status = backend.submit(spec)

    assert status.state is JobState.PENDING
    assert status.result_uri == f"{OUTPUT}/{spec.name}/"
    assert "cluster-management/nova-hp" in status.console_url
    assert "region=us-east-1" in status.console_url
    assert fake_kube.created("pytorchjobs") == 1
    assert fake_kube.created("configmaps") == 1
    assert fake_kube.created("statefulsets") == 0

    job = fake_kube.get("pytorchjobs", spec.name)
    assert job["apiVersion"] == "kubeflow.org/v1"
    labels = job["metadata"]["labels"]
    assert labels["app"] == spec.name
    assert labels["tuneloop.io/managed-by"] == "tuneloop"
    assert {k: labels[k] for k in spec.labels} == spec.labels
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "None"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] == 3
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        container = pod["containers"][0]
        assert container["name"] == "pytorch"
        assert container["image"] == (
            "708977205387.dkr.ecr.us-east-1.amazonaws.com/nova-fine-tune-repo:SM-HP-SFT-V2-latest"
        )
        assert container["resources"]["requests"] == {
            "nvidia.com/gpu": "8",
            "vpc.amazonaws.com/efa": "32",
        }
        assert {
            "key": "sagemaker.amazonaws.com/RestrictedNode",
            "operator": "Equal",
            "value": "Worker",
            "effect": "NoSchedule",
        } in pod["tolerations"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expressions = {
            e["key"]: e["values"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]
        }
        assert expressions["node.kubernetes.io/instance-type"] == ["ml.p5.48xlarge"]
        assert expressions["sagemaker.amazonaws.com/instance-group-type"] == ["Restricted"]

    config_map = fake_kube.get("configmaps", f"training-config-{spec.name}")
    recipe = yaml.safe_load(config_map["data"]["config.yaml"])
    assert recipe["run"]["name"] == spec.name
    assert recipe["run"]["output_s3_path"] == OUTPUT
    assert recipe["run"]["data_s3_path"] == "s3://bucket/train.jsonl"
    owner = config_map["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("PyTorchJob", job["metadata"]["uid"])


def test_submit_twice_creates_once_and_adopts(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    first = backend.submit(spec)
    fake_kube.set_job_conditions(spec.name, ["Created", "Running"])
    _start_pods(fake_kube, spec.name, workers=3)
    second = make_backend(backend.config()).submit(spec)

    assert (first.state, second.state) == (JobState.PENDING, JobState.RUNNING)
    assert fake_kube.created("pytorchjobs") == 1
    assert fake_kube.created("configmaps") == 1
    assert fake_kube.count("POST", "pytorchjobs") == 1


def test_submit_after_409_adopts_the_job_someone_else_created(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    # Another worker creates the job between our describe (404) and our create (409), and has
    # not created its ConfigMap yet.
    theirs = build_job_objects(
        spec, namespace="kubeflow", region="us-east-1", instance_type="ml.p5.48xlarge"
    )
    fake_kube.put("pytorchjobs", theirs.job.body)
    fake_kube.fail("GET", "pytorchjobs", 404, times=1)

    status = backend.submit(spec)

    assert status.name == spec.name
    assert fake_kube.count("POST", "pytorchjobs") == 1
    assert fake_kube.created("pytorchjobs") == 0
    assert len(fake_kube.objects("pytorchjobs")) == 1
    assert fake_kube.created("configmaps") == 1


def test_a_job_tuneloop_did_not_create_is_adopted_as_it_is(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    fake_kube.put("pytorchjobs", {"metadata": {"name": spec.name, "labels": {"app": spec.name}}})

    assert backend.submit(spec).name == spec.name
    assert sum(fake_kube.creates.values()) == 0


def test_submit_completes_a_partly_created_job(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    fake_kube.handle(
        "DELETE", f"/api/v1/namespaces/kubeflow/configmaps/training-config-{spec.name}", {}, None
    )

    backend.submit(spec)

    assert fake_kube.created("pytorchjobs") == 1
    assert fake_kube.created("configmaps") == 2
    assert fake_kube.exists("configmaps", f"training-config-{spec.name}")


def test_submit_rejects_what_the_cluster_would_refuse_before_calling_it(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    with pytest.raises(UserJobError, match=r"instance_type 'ml\.m5\.large'"):
        HyperPodJobBackend(
            "c", "us-east-1", kubeconfig=str(fake_kube.kubeconfig), instance_type="ml.m5.large"
        ).submit(_spec())
    with pytest.raises(UserJobError, match=r"region 'eu-north-1'"):
        HyperPodJobBackend("c", "eu-north-1", kubeconfig=str(fake_kube.kubeconfig)).submit(_spec())
    with pytest.raises(UserJobError, match="not a valid job name"):
        backend.submit(_spec(name="Bad_Name"))
    assert sum(fake_kube.requests.values()) == 0


# --- status ------------------------------------------------------------------------------


def test_created_running_succeeded(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    fake_kube.set_job_conditions(spec.name, ["Created"])
    created = backend.status(spec.name)
    assert created.state is JobState.PENDING

    _start_pods(fake_kube, spec.name, workers=3)
    fake_kube.set_job_conditions(spec.name, ["Created", "Running"])
    assert backend.status(spec.name).state is JobState.RUNNING

    start = datetime(2026, 1, 1, 10, tzinfo=UTC)
    fake_kube.set_job_conditions(
        spec.name,
        ["Created", "Running", "Succeeded"],
        start_time=start,
        completion_time=start + timedelta(hours=1),
    )
    done = backend.status(spec.name)
    assert done.state is JobState.SUCCEEDED
    assert done.final
    assert (done.started_at, done.ended_at) == (start, start + timedelta(hours=1))
    assert done.billable_seconds == 3600 * 4
    assert done.result_uri == f"{OUTPUT}/{spec.name}/"
    assert done.labels["campaign"] == "camp"


def test_latest_true_condition_wins_over_list_order(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    stamp = "2026-01-01T00:00:{:02d}Z"
    conditions = [
        {"type": "Running", "status": "True", "lastTransitionTime": stamp.format(9)},
        {"type": "Created", "status": "True", "lastTransitionTime": stamp.format(1)},
    ]
    fake_kube.set_job_conditions(spec.name, conditions)
    assert backend.status(spec.name).state is JobState.RUNNING


def test_failed_carries_reason_message_and_log_tail(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    fake_kube.write_log(f"{spec.name}-master-0", *[f"step {i}" for i in range(10)], "OOM at step 9")
    fake_kube.set_job_conditions(
        spec.name,
        ["Created", "Running", ("Failed", "PyTorchJobFailed", "master-0 exited with code 137")],
    )

    status = backend.status(spec.name)

    assert status.state is JobState.FAILED
    assert not status.retryable
    assert "PyTorchJobFailed" in status.failure_reason
    assert "exited with code 137" in status.failure_reason
    assert "OOM at step 9" in status.failure_reason
    assert "step 4" not in status.failure_reason  # only the last log_lines=5 lines
    assert status.ended_at is not None


def test_restarting_stays_running(backend: HyperPodJobBackend, fake_kube: FakeKube) -> None:  # noqa: F811
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    fake_kube.set_job_conditions(spec.name, ["Created", "Running", "Restarting"])
    fake_kube.set_container_state(f"{spec.name}-master-0", restart_count=2)

    status = backend.status(spec.name)

    assert status.state is JobState.RUNNING
    assert "restarting" in status.message


def test_crash_loop_fails_with_the_crashed_containers_log(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name, workers=1)
    master = f"{spec.name}-master-0"
    fake_kube.write_log(master, "loading recipe", "ValueError: model config not found")
    fake_kube.restart_container(master)
    fake_kube.set_container_state(master, waiting=("CrashLoopBackOff", "back-off 20s"))
    fake_kube.set_job_conditions(spec.name, ["Created", "Running"])

    status = backend.status(spec.name)

    assert status.state is JobState.FAILED
    assert "CrashLoopBackOff" in status.message
    assert "ValueError: model config not found" in status.failure_reason


def test_too_many_restarts_fails(backend: HyperPodJobBackend, fake_kube: FakeKube) -> None:  # noqa: F811
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name, workers=1)
    worker = f"{spec.name}-worker-0"
    fake_kube.write_log(worker, "NCCL error: unhandled system error")
    fake_kube.set_job_conditions(spec.name, ["Created", "Running"])
    fake_kube.set_container_state(worker, restart_count=3)
    assert backend.status(spec.name).state is JobState.RUNNING

    fake_kube.set_container_state(worker, restart_count=4)
    status = backend.status(spec.name)

    assert status.state is JobState.FAILED
    assert "restarted 4 times" in status.message
    assert "NCCL error" in status.failure_reason


def test_image_pull_failure_is_final_and_not_retryable(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    fake_kube.set_container_state(
        f"{spec.name}-master-0",
        waiting=("ImagePullBackOff", 'Back-off pulling image "bad/image:tag"'),
        phase="Pending",
    )
    fake_kube.set_job_conditions(spec.name, ["Created"])

    status = backend.status(spec.name)

    assert status.state is JobState.FAILED
    assert not status.retryable
    assert "cannot pull image" in status.failure_reason


def test_unschedulable_pods_stay_pending_with_a_capacity_message(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    fake_kube.make_unschedulable(
        f"{spec.name}-master-0", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    )
    fake_kube.set_job_conditions(spec.name, ["Created"])

    status = backend.status(spec.name)

    assert status.state is JobState.PENDING
    assert "waiting for capacity" in status.message
    assert "Insufficient nvidia.com/gpu" in status.message


def test_unknown_job_raises_job_not_found(backend: HyperPodJobBackend) -> None:
    with pytest.raises(JobNotFoundError):
        backend.status("nope-0123456789")
    with pytest.raises(JobNotFoundError):
        backend.logs("nope-0123456789")


# --- cancel ------------------------------------------------------------------------------


def test_cancel_deletes_everything_and_is_idempotent(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    fake_kube.set_job_conditions(spec.name, ["Created", "Running"])

    stopped = backend.cancel(spec.name)

    assert stopped.state is JobState.STOPPED
    assert fake_kube.objects("pytorchjobs") == []
    assert fake_kube.objects("configmaps") == []
    again = backend.cancel(spec.name)
    assert again.state is JobState.STOPPED
    with pytest.raises(JobNotFoundError):
        backend.status(spec.name)


def test_cancel_leaves_a_finished_job_and_returns_its_status(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    fake_kube.set_job_conditions(spec.name, ["Created", "Running", "Succeeded"])

    status = backend.cancel(spec.name)

    assert status.state is JobState.SUCCEEDED
    assert fake_kube.exists("pytorchjobs", spec.name)
    assert fake_kube.count("DELETE", "pytorchjobs") == 0


def test_cancel_deletes_a_crash_looping_job(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    _start_pods(fake_kube, spec.name)
    fake_kube.set_container_state(f"{spec.name}-master-0", waiting=("CrashLoopBackOff", ""))
    fake_kube.set_job_conditions(spec.name, ["Created", "Running"])

    assert backend.cancel(spec.name).state is JobState.STOPPED
    assert not fake_kube.exists("pytorchjobs", spec.name)


# --- logs --------------------------------------------------------------------------------


def test_logs_cursor_never_repeats_or_drops_lines_across_a_restart(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    master = f"{spec.name}-master-0"
    assert backend.logs(spec.name).lines == []  # no pod yet
    _start_pods(fake_kube, spec.name)
    fake_kube.write_log(master, "a", "b", "c")

    first = backend.logs(spec.name)
    fake_kube.write_log(master, "d", "e")
    second = backend.logs(spec.name, first.cursor)
    fake_kube.write_log(master, "f")
    fake_kube.restart_container(master)
    fake_kube.write_log(master, "g", "h")
    third = backend.logs(spec.name, second.cursor)
    fourth = backend.logs(spec.name, third.cursor)
    fake_kube.write_log(master, "i")
    fifth = backend.logs(spec.name, fourth.cursor)

    assert first.lines == ["a", "b", "c"]
    assert second.lines == ["d", "e"]
    assert third.lines == ["f", "g", "h"]
    assert fourth.lines == []
    assert fifth.lines == ["i"]
    # Later reads ask the server only for lines from the cursor on.
    assert all("sinceTime" in q for q in fake_kube.log_queries[1:])


def test_logs_of_a_container_still_starting_are_empty(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    fake_kube.add_pod(f"{spec.name}-master-0", job=spec.name, phase="Pending")

    first = backend.logs(spec.name)
    fake_kube.set_container_state(f"{spec.name}-master-0", phase="Running")
    fake_kube.write_log(f"{spec.name}-master-0", "started")

    assert first.lines == []
    assert backend.logs(spec.name, first.cursor).lines == ["started"]


def test_logs_at_the_same_timestamp_are_not_lost(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    master = f"{spec.name}-master-0"
    _start_pods(fake_kube, spec.name)
    moment = fake_kube.tick()
    log = fake_kube._logs[("kubeflow", master, "pytorch")][-1]
    log.lines += [(moment, "x1"), (moment, "x2")]
    first = backend.logs(spec.name)
    log.lines += [(moment, "x3")]

    second = backend.logs(spec.name, first.cursor)

    assert first.lines == ["x1", "x2"]
    assert second.lines == ["x3"]


# --- find --------------------------------------------------------------------------------


def test_find_by_labels_oldest_first(backend: HyperPodJobBackend, fake_kube: FakeKube) -> None:  # noqa: F811
    older = _spec("camp-r1-sft-aaaaaaaaaa")
    newer = _spec("camp-r2-sft-bbbbbbbbbb", labels={"campaign": "camp", "round": "2"})
    other = _spec("else-r1-sft-cccccccccc", labels={"campaign": "else", "round": "1"})
    for spec in (older, newer, other):
        backend.submit(spec)
    # A job with the right labels that tuneloop did not create is not ours to report.
    fake_kube.put("pytorchjobs", {"metadata": {"name": "manual", "labels": {"campaign": "camp"}}})

    found = backend.find({"campaign": "camp"})
    round_two = backend.find({"campaign": "camp", "round": "2"})

    assert [s.name for s in found] == [older.name, newer.name]
    assert [s.name for s in round_two] == [newer.name]
    assert backend.find({"campaign": "none"}) == []


# --- errors ------------------------------------------------------------------------------


def test_forbidden_create_is_a_user_error_with_a_fix(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    fake_kube.fail("POST", "pytorchjobs", 403, message="pytorchjobs is forbidden: User cannot")
    with pytest.raises(UserJobError) as caught:
        backend.submit(_spec())
    text = str(caught.value)
    assert "forbidden" in text
    assert "access entries" in text
    assert "RBAC" in text
    assert fake_kube.created("configmaps") == 0


def test_server_errors_and_throttling_are_transient(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _spec()
    backend.submit(spec)
    fake_kube.fail("GET", "pytorchjobs", 500)
    with pytest.raises(TransientJobError):
        backend.status(spec.name)
    # One 429 with Retry-After is retried by the client's connection pool; a lasting one is not.
    fake_kube.fail("GET", "pytorchjobs", 429)
    assert backend.status(spec.name).state is JobState.PENDING
    fake_kube.fail("GET", "pytorchjobs", 429, times=10)
    with pytest.raises(TransientJobError, match="429"):
        backend.status(spec.name)
    fake_kube.fail("POST", "pytorchjobs", 503)
    with pytest.raises(TransientJobError):
        backend.submit(_spec("camp-r2-sft-0123456789"))


def test_missing_namespace_is_named(fake_kube: FakeKube) -> None:  # noqa: F811
    backend = HyperPodJobBackend(
        "nova-hp", "us-east-1", namespace="training", kubeconfig=str(fake_kube.kubeconfig)
    )
    with pytest.raises(UserJobError, match="namespace 'training' does not exist"):
        backend.submit(_spec())


def test_unreachable_cluster_is_transient(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        "apiVersion": "v1",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    backend = HyperPodJobBackend("nova-hp", "us-east-1", kubeconfig=str(path))
    with pytest.raises(TransientJobError, match="cannot reach"):
        backend.status("job-0123456789")


def test_unreadable_kubeconfig_is_a_user_error(tmp_path: Path) -> None:
    backend = HyperPodJobBackend("nova-hp", "us-east-1", kubeconfig=str(tmp_path / "missing"))
    with pytest.raises(UserJobError, match="kubeconfig"):
        backend.status("job-0123456789")


def test_config_round_trips_through_make_backend(backend: HyperPodJobBackend) -> None:
    config = backend.config()
    rebuilt = make_backend(json.loads(json.dumps(config)))
    assert isinstance(rebuilt, HyperPodJobBackend)
    assert rebuilt.config() == config
    assert config["type"] == "hyperpod"
    assert set(config) == {
        "type",
        "cluster",
        "region",
        "namespace",
        "aws_conn_id",
        "kubeconfig",
        "context",
        "instance_type",
        "max_restarts",
        "log_lines",
        "service_account_name",
        "source_account",
    }


def test_launcher_environment_and_service_account_reach_every_pod(
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    backend = HyperPodJobBackend(
        cluster="nova-hp",
        region="us-east-1",
        kubeconfig=str(fake_kube.kubeconfig),
        service_account_name="nova-jobs",
        source_account="210987654321",
    )
    spec = _spec()
    backend.submit(spec)
    job = fake_kube.get("pytorchjobs", spec.name)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["serviceAccountName"] == "nova-jobs"
        assert "hostNetwork" not in pod  # only evaluations call their Lambda from the node
        for container in pod["initContainers"] + pod["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env == {
                "X_AMZ_SOURCE_ACCOUNT": "210987654321",
                "INSTANCE_TYPE": "ml.p5.48xlarge",
                "AWS_REGION": "us-east-1",
            }
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/tmp"]]["hostPath"]["path"] == "/opt/dlami/nvme"
        assert volumes[mounts["/var/log/aws/clusters"]]["hostPath"]["path"] == (
            "/var/log/aws/clusters"
        )
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}

    evaluation = _spec(
        "camp-r1-eval-0123456789",
        kind=JobKind.EVAL,
        method="eval",
        recipe=_recipe("eval-benchmark.yaml"),
        inputs={},
    )
    backend.submit(evaluation)
    pod = fake_kube.get("pytorchjobs", evaluation.name)["spec"]["pytorchReplicaSpecs"]
    assert pod["Master"]["template"]["spec"]["hostNetwork"] is True
    assert pod["Master"]["template"]["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_regions_are_the_launchers() -> None:
    """The launcher deploys Nova jobs in five regions and RFT in four of them (not us-west-2);
    the init container comes from the region's Nova account."""
    frankfurt = build_job_objects(
        _rft_spec(), namespace="kubeflow", region="eu-central-1", instance_type="ml.p5.48xlarge"
    )
    prompter = next(
        o for o in frankfurt.companions if o.name.endswith("-prompter") and o.kind == "Job"
    )
    [init] = prompter.body["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == (
        "874160969292.dkr.ecr.eu-central-1.amazonaws.com/init-container-repo:latest"
    )
    with pytest.raises(UserJobError, match="not supported for region 'us-west-2' on hyperpod"):
        build_job_objects(
            _rft_spec(), namespace="kubeflow", region="us-west-2", instance_type="ml.p5.48xlarge"
        )
    build_job_objects(
        _spec(), namespace="kubeflow", region="us-west-2", instance_type="ml.p5.48xlarge"
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("service_account_name", "Nova_Jobs"),
        ("service_account_name", "-nova"),
        ("source_account", "12345"),
    ],
)
def test_backend_settings_the_cluster_would_refuse_are_named(setting: str, value: str) -> None:
    with pytest.raises(UserJobError) as info:
        HyperPodJobBackend(cluster="nova-hp", region="us-east-1", **{setting: value})
    [problem] = info.value.problems
    assert problem.path == f"backend.{setting}"
    assert repr(value) in problem.message
    assert problem.fix


# --- RFT ---------------------------------------------------------------------------------

# As the launcher's RFT chart: vLLM and NATS StatefulSets; the hub Deployment; the prompter,
# scoring and NATS bootstrap Jobs; Services for vLLM, hub, prompter, scoring and NATS (client
# and headless); one ConfigMap per service plus nats.conf.
_RFT_PARTS = {"statefulsets": 2, "services": 6, "deployments": 1, "jobs": 3, "configmaps": 7}


def test_rft_creates_its_workloads_exactly_once(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    spec = _rft_spec()
    backend.submit(spec)
    backend.submit(spec)

    assert fake_kube.created("pytorchjobs") == 1
    assert {p: fake_kube.created(p) for p in _RFT_PARTS} == _RFT_PARTS
    job = fake_kube.get("pytorchjobs", spec.name)
    trainer = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert trainer["image"].endswith("nova-fine-tune-repo:SM-HP-RFT-TRAIN-V2-latest")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    vllm = fake_kube.get("statefulsets", f"{spec.name}-vllm")
    assert vllm["spec"]["replicas"] == 3
    generation = vllm["spec"]["template"]["spec"]["containers"][0]
    assert generation["image"].endswith("SM-HP-RFT-GENERATION-V2-latest")
    assert generation["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert fake_kube.get("deployments", f"{spec.name}-hubcli")["spec"]["replicas"] == 2
    uid = job["metadata"]["uid"]
    for plural in _RFT_PARTS:
        for obj in fake_kube.objects(plural):
            assert obj["metadata"]["ownerReferences"][0]["uid"] == uid

    # A set left half-created is completed, not duplicated.
    fake_kube.handle(
        "DELETE", f"/apis/apps/v1/namespaces/kubeflow/statefulsets/{spec.name}-vllm", {}, None
    )
    backend.submit(spec)
    assert fake_kube.created("statefulsets") == 3
    assert fake_kube.created("deployments") == 1
    assert fake_kube.exists("statefulsets", f"{spec.name}-vllm")


def test_rft_redis_only_when_the_rollout_delegates(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    plain = _rft_spec()
    # The recipe schema has no such field yet; the launcher's chart reads it when present.
    recipe = {**plain.recipe}
    recipe["training_config"] = {
        **recipe["training_config"],
        "rollout": {**recipe["training_config"]["rollout"], "delegate": True},
    }
    spec = plain.model_copy(update={"recipe": recipe})
    backend.submit(plain.model_copy(update={"name": "camp-r1-rft-plain00000"}))
    assert fake_kube.created("deployments") == 1
    backend.submit(spec)
    assert fake_kube.exists("deployments", f"{spec.name}-redis")
    assert fake_kube.exists("services", f"{spec.name}-redis")


def test_rft_cancel_and_finish_release_the_side_workloads(
    backend: HyperPodJobBackend,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    running, finished = _rft_spec("camp-r1-rft-aaaaaaaaaa"), _rft_spec("camp-r2-rft-bbbbbbbbbb")
    backend.submit(running)
    backend.submit(finished)
    fake_kube.set_job_conditions(running.name, ["Created", "Running"])
    fake_kube.set_job_conditions(finished.name, ["Created", "Running", "Succeeded"])

    backend.cancel(running.name)
    done = backend.status(finished.name)

    assert done.state is JobState.SUCCEEDED
    assert [j["metadata"]["name"] for j in fake_kube.objects("pytorchjobs")] == [finished.name]
    for plural in ("statefulsets", "deployments", "services", "jobs"):
        assert fake_kube.objects(plural) == []
    # The finished job keeps its recipe; the cancelled one's is gone.
    assert [c["metadata"]["name"] for c in fake_kube.objects("configmaps")] == [
        f"{finished.name}-training-config"
    ]
    assert fake_kube.objects("jobs") == []
    assert done.billable_seconds is None or done.billable_seconds >= 0


# --- connecting through the AWS connection (tuneloop.aws), against moto ------------------


@pytest.fixture
def aws_connection(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An Airflow AWS connection (from the environment) whose endpoint is the moto server, read
    as a task reads it (outside Airflow, tuneloop uses boto3's default chain instead)."""
    extra = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_MOTO", json.dumps({"conn_type": "aws", "extra": extra}))
    with inside_a_task():
        yield "aws_moto"


def _client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def test_eks_connection_builds_a_client_with_a_presigned_token(
    s3_server: str, aws_connection: str
) -> None:
    eks = _client("eks", s3_server)
    cluster = eks.create_cluster(
        name="nova-hp-eks",
        roleArn="arn:aws:iam::123456789012:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-1"]},
    )["cluster"]
    backend = HyperPodJobBackend(cluster["arn"], "us-east-1", aws_conn_id=aws_connection)

    api = backend._api()

    assert api.configuration.host == cluster["endpoint"]
    token = api.configuration.api_key["BearerToken"]
    assert token.startswith("k8s-aws-v1.") and not token.endswith("=")
    assert api.configuration.api_key_prefix["BearerToken"] == "Bearer"
    # What `aws eks get-token` hands EKS: a presigned GetCallerIdentity that signs the cluster's
    # name; the Amazon provider's own helper, given the same session, asks for the same URL.
    import base64
    from urllib.parse import parse_qs, urlsplit

    from airflow.providers.amazon.aws.utils.eks_get_token import fetch_access_token_for_cluster

    from tuneloop import aws

    def query(bearer: str) -> dict[str, list[str]]:
        encoded = bearer.removeprefix("k8s-aws-v1.")
        url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        assert url.startswith("https://sts.us-east-1.amazonaws.com/?")
        return parse_qs(urlsplit(url).query)

    ours = query(token)
    assert ours["Action"] == ["GetCallerIdentity"] and ours["X-Amz-Expires"] == ["60"]
    assert ours["X-Amz-SignedHeaders"] == ["host;x-k8s-aws-id"]
    session = aws.session("us-east-1", conn_id=aws_connection)
    key = session.get_credentials().access_key
    assert ours["X-Amz-Credential"][0].startswith(f"{key}/")
    theirs = query(
        fetch_access_token_for_cluster(
            "nova-hp-eks",
            "https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15",
            "us-east-1",
            session=session,
        )
    )
    assert sorted(theirs) == sorted(ours)
    assert theirs["X-Amz-Credential"][0].split("/")[0] == key
    assert backend._api() is api  # built once per backend
    # Through EKS, X_AMZ_SOURCE_ACCOUNT is the account of the connection's credentials.
    assert backend._source_account() == "123456789012"


def test_hyperpod_cluster_without_eks_or_missing_is_a_user_error(
    s3_server: str, aws_connection: str
) -> None:
    # moto keeps no Orchestrator for HyperPod clusters, so this one looks like a Slurm cluster.
    _client("sagemaker", s3_server).create_cluster(
        ClusterName="slurm-hp",
        InstanceGroups=[
            {
                "InstanceGroupName": "workers",
                "InstanceType": "ml.p5.48xlarge",
                "InstanceCount": 1,
                "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-lc/", "OnCreate": "on.sh"},
                "ExecutionRole": "arn:aws:iam::123456789012:role/hp",
                "ThreadsPerCore": 1,
            }
        ],
    )
    slurm = HyperPodJobBackend("slurm-hp", "us-east-1", aws_conn_id=aws_connection)
    missing = HyperPodJobBackend("nowhere", "us-east-1", aws_conn_id=aws_connection)

    with pytest.raises(UserJobError, match="not orchestrated by Amazon EKS"):
        slurm.status("job-0123456789")
    with pytest.raises(UserJobError, match="'nowhere' not found in region 'us-east-1'"):
        missing.status("job-0123456789")
