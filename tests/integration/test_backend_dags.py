"""The job operators run by Airflow (``dag.test()``) on the HyperPod and SageMaker training-jobs
backends, against fake services over real HTTP: the fake Kubernetes API (``fakes.kube_api``), the
fake SageMaker endpoint (``fakes.sagemaker``) and moto for S3 and CloudWatch Logs.

A job's life is played on the fake while the DAG runs: a background thread for the Kubernetes
fake, which waits on what the fake sees (the PyTorchJob appearing, the trigger polling it)
rather than on the clock; the SageMaker fake walks its script one step per describe and writes
the job's output.tar.gz the moment the job completes. The DAGs are in
``dags/tuneloop_backend_jobs.py``; they read the fakes' addresses from the environment.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.kube_api import FakeKube, fake_kube  # noqa: F401
from fakes.sagemaker import COMPLETED, STARTING, TRAINING, FakeJob, FakeSageMaker, output_tarball

pytestmark = pytest.mark.slow  # five dag.test() runs, a few seconds each

DAG_FILE = Path(__file__).resolve().parent / "dags" / "tuneloop_backend_jobs.py"
SETTINGS = ("TUNELOOP_TEST_BUCKET", "TUNELOOP_TEST_KUBECONFIG", "TUNELOOP_TEST_SAGEMAKER_URL")
REGION = "us-east-1"
ESCROW = "s3://customer-escrow-123456789012-abc/sft-job/step100"
METRICS = {"rougeL": 0.61, "bleu": 0.42}
LOG_LINES = 20  # the DAG file's log_lines: how much of the log a HyperPod failure carries
LOG_GROUP = "/aws/sagemaker/TrainingJobs"


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def s3(s3_server: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name=REGION)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A bucket of this test's own (moto is shared by the whole session)."""
    name = f"dags-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def parse(dag_id: str) -> Any:
    """The DAG, parsed from its file with the settings this test put in the environment."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def printed(out: str, name: str, line: str) -> int:
    """How often the job's log line reached the task log (the trigger prefixes ``[job]``)."""
    return len(re.findall(rf"\[{re.escape(name)}\] {re.escape(line)}(?:\s|$)", out))


def states_seen(out: str, name: str) -> list[str]:
    """The states the trigger logged for the job, in order (it logs each change once)."""
    return re.findall(rf"Job {re.escape(name)} is ([A-Z]+): ", out)


class _Stopped(Exception):
    """The DAG run ended before the script got this far."""


class Script:
    """Plays a job's life on a fake service from a background thread while ``dag.test()`` runs.

    It waits on conditions the fake can see (an object created, a request count), checked every
    few milliseconds, never on fixed sleeps. Leaving the ``with`` block stops a script still
    waiting (the run ended early) and raises what the script raised."""

    # Generous: the first dag.test() of a session starts Airflow's in-process API, slowly on a
    # busy machine; the script waits only as long as the run takes.
    def __init__(self, play: Callable[[Script], None], timeout: float = 180.0) -> None:
        self._play = play
        self._timeout = timeout
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.finished = False
        self._thread = threading.Thread(target=self._run, name="job-script", daemon=True)

    def wait_for(self, condition: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + self._timeout
        while not (value := condition()):
            if self._stop.is_set():
                raise _Stopped(what)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)
        return value

    def _run(self) -> None:
        try:
            self._play(self)
            self.finished = True
        except _Stopped:
            pass
        except BaseException as exc:  # surfaced in __exit__
            self._error = exc

    def __enter__(self) -> Script:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._error is not None and exc_info[0] is None:
            raise self._error


# --- HyperPod: the fake Kubernetes API -----------------------------------------------------------


@pytest.fixture
def hyperpod(
    fake_kube: FakeKube,  # noqa: F811
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> FakeKube:
    monkeypatch.setenv("TUNELOOP_TEST_BUCKET", bucket)
    monkeypatch.setenv("TUNELOOP_TEST_KUBECONFIG", str(fake_kube.kubeconfig))
    monkeypatch.delenv("TUNELOOP_TEST_SAGEMAKER_URL", raising=False)
    return fake_kube


def created_job(script: Script, kube: FakeKube) -> str:
    """The name of the PyTorchJob the task creates (waits for it)."""
    jobs = script.wait_for(lambda: kube.objects("pytorchjobs"), "the PyTorchJob to be created")
    return jobs[0]["metadata"]["name"]


def polled(script: Script, kube: FakeKube) -> None:
    """Wait until the trigger has fully looked at the job as it is now: after the task has
    deferred only the trigger reads the PyTorchJob, and its second read starts the poll after
    one that saw the current state (job, pods and log)."""
    seen = kube.count("GET", "pytorchjobs")
    script.wait_for(lambda: kube.count("GET", "pytorchjobs") >= seen + 2, "the trigger to poll")


TRAINING_LOG = ("loading recipe", "step 1 loss 2.31", "step 2 loss 1.87", "step 3 loss 1.52")


def play_training(kube: FakeKube, s3: Any) -> Callable[[Script], None]:
    """Created -> Running (logging) -> Succeeded, with the manifest written as the job ends."""

    def play(script: Script) -> None:
        name = created_job(script, kube)
        pod = f"{name}-master-0"
        kube.set_job_conditions(name, ["Created"])
        polled(script, kube)
        kube.add_pod(pod, job=name)
        kube.write_log(pod, *TRAINING_LOG[:2])
        kube.set_job_conditions(name, ["Created", "Running"], start_time=kube.tick())
        polled(script, kube)
        kube.write_log(pod, *TRAINING_LOG[2:])
        polled(script, kube)
        # The job writes its manifest where its recipe (the ConfigMap it reads) says.
        config = kube.get("configmaps", f"training-config-{name}")["data"]["config.yaml"]
        output = yaml.safe_load(config)["run"]["output_s3_path"]
        target, _, prefix = output.removeprefix("s3://").partition("/")
        manifest = json.dumps({"checkpoint_s3_bucket": ESCROW})
        s3.put_object(
            Bucket=target, Key=f"{prefix.rstrip('/')}/{name}/manifest.json", Body=manifest
        )
        kube.write_log(pod, "saved the checkpoint")
        kube.set_job_conditions(
            name, ["Created", "Running", "Succeeded"], completion_time=kube.tick()
        )

    return play


def test_hyperpod_training_job_runs_once_and_feeds_the_next_task(
    airflow: Any,
    hyperpod: FakeKube,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dag = parse("tuneloop_hyperpod_train")
    with Script(play_training(hyperpod, s3)) as script:
        run = dag.test()
    assert script.finished
    assert run.state == "success"

    result = airflow.xcom(dag.dag_id, run.run_id, "train")
    name = result["name"]
    assert result["state"] == "SUCCEEDED"
    assert result["result_uri"] == f"s3://{bucket}/hyperpod/{name}/"
    assert airflow.xcom(dag.dag_id, run.run_id, "checkpoint") == ESCROW
    # Exactly one job: one PyTorchJob and its recipe ConfigMap, one create request each.
    assert hyperpod.created("pytorchjobs") == hyperpod.count("POST", "pytorchjobs") == 1
    assert hyperpod.created("configmaps") == 1
    config = hyperpod.get("configmaps", f"training-config-{name}")["data"]["config.yaml"]
    assert yaml.safe_load(config)["run"]["name"] == name

    out = capsys.readouterr().out
    # The trigger (not the task) saw the job waiting for its pods, running, then succeeded.
    assert states_seen(out, name) == ["PENDING", "RUNNING", "SUCCEEDED"], out
    assert f"PyTorchJob {name} created; waiting for its pods" in out
    for line in (*TRAINING_LOG, "saved the checkpoint"):
        assert printed(out, name, line) == 1, (line, out)

    # The same DAG again: the job (same name) is found finished and returned; nothing created.
    again = dag.test()
    assert again.state == "success"
    assert airflow.xcom(dag.dag_id, again.run_id, "train")["name"] == name
    assert airflow.xcom(dag.dag_id, again.run_id, "checkpoint") == ESCROW
    assert f"Adopting job {name} (SUCCEEDED)" in capsys.readouterr().out
    assert hyperpod.count("POST", "pytorchjobs") == hyperpod.created("pytorchjobs") == 1
    assert hyperpod.created("configmaps") == 1
    assert sum(hyperpod.deletes.values()) == 0


CRASH_LOG = (
    "step 1 loss 2.31",
    "Traceback (most recent call last):",
    "ValueError: row 7 has no assistant turn",
)


def play_crash_loop(kube: FakeKube) -> Callable[[Script], None]:
    """The job runs, its container crashes and the kubelet backs off restarting it."""

    def play(script: Script) -> None:
        name = created_job(script, kube)
        pod = f"{name}-master-0"
        kube.add_pod(pod, job=name)
        kube.set_job_conditions(name, ["Created", "Running"], start_time=kube.tick())
        kube.write_log(pod, *CRASH_LOG)
        polled(script, kube)
        kube.restart_container(pod)  # the crashed container's log becomes the previous log
        kube.set_container_state(pod, waiting=("CrashLoopBackOff", "back-off 10s restarting"))

    return play


@pytest.fixture
def crash_looped(
    airflow: Any, hyperpod: FakeKube, capsys: pytest.CaptureFixture[str]
) -> tuple[Any, str, str]:
    """A run of the HyperPod DAG whose job crash-loops: (dag run, job name, its output)."""
    dag = parse("tuneloop_hyperpod_train")
    with Script(play_crash_loop(hyperpod)) as script:
        run = dag.test()
    assert script.finished
    name = airflow.xcom(dag.dag_id, run.run_id, "plan_sft")["name"]
    return run, name, capsys.readouterr().out


def test_hyperpod_crash_loop_fails_the_task_with_the_pods_last_lines(
    airflow: Any,
    hyperpod: FakeKube,
    crash_looped: tuple[Any, str, str],
) -> None:
    run, name, out = crash_looped
    assert run.state == "failed"
    states = {
        task: airflow.task_instance(run.dag_id, run.run_id, task).state
        for task in ("train", "checkpoint")
    }
    assert states == {"train": "failed", "checkpoint": "upstream_failed"}
    assert hyperpod.count("POST", "pytorchjobs") == 1
    # The task's error names the crash loop and carries the crashed container's last lines.
    pod = f"{name}-master-0"
    error = re.search(
        rf"TrainingJobOperator train: job {name} ended FAILED: pod {pod} container pytorch is "
        rf"in CrashLoopBackOff after 1 restart\(s\)\s+last {LOG_LINES} log lines of {pod}:"
        r"\s+(?P<tail>(?:.*\n){3})",
        out,
    )
    assert error is not None, out
    tail = [line.strip() for line in error["tail"].splitlines()]
    assert tail == list(CRASH_LOG), tail
    # The lines also reached the task log as the job wrote them, once each.
    for line in CRASH_LOG:
        assert printed(out, name, line) == 1, (line, out)


def test_hyperpod_crash_loop_job_is_deleted_by_the_failure_path(
    hyperpod: FakeKube, crash_looped: tuple[Any, str, str]
) -> None:
    _, name, _ = crash_looped
    assert not hyperpod.exists("pytorchjobs", name)
    assert not hyperpod.exists("configmaps", f"training-config-{name}")


# --- SageMaker training jobs: the fake SageMaker endpoint, S3 and logs on moto ------------------


@pytest.fixture(scope="module")
def sagemaker_service(s3_server: str) -> Iterator[FakeSageMaker]:
    service = FakeSageMaker(REGION).start()
    yield service
    service.stop()


@pytest.fixture
def logs(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """CloudWatch Logs on moto; the backend's logs client follows boto3's configured endpoint."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", s3_server)
    client = boto3.client("logs", endpoint_url=s3_server, region_name=REGION)
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_group(logGroupName=LOG_GROUP)
    return client


def job_log(job: FakeJob) -> list[str]:
    stage = {tag["Key"]: tag["Value"] for tag in job.tags}["stage"]
    return [f"{stage} started", f"{stage} step 1", f"{stage} done"]


@pytest.fixture
def sagemaker(
    sagemaker_service: FakeSageMaker,
    bucket: str,
    s3: Any,
    logs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> FakeSageMaker:
    """The fake endpoint, reset; as a job completes it leaves what a Nova job leaves: its log in
    CloudWatch and its output.tar.gz (a manifest, or evaluation results) in S3."""
    fake = sagemaker_service
    fake.reset()

    def finish(job: FakeJob) -> None:
        output = job.request["OutputDataConfig"]["S3OutputPath"]
        _, _, path = output.removeprefix("s3://").partition("/")
        if {"Key": "stage", "Value": "eval"} in job.tags:
            results = json.dumps({"results": {"gen_qa|0": METRICS, "all": METRICS}})
            members = {
                f"{job.name}/eval_results/inference_output.jsonl": '{"prediction": "x"}\n',
                f"{job.name}/eval_results/results_2026-01-01T00-00-00.000000.json": results,
            }
        else:
            members = {"manifest.json": json.dumps({"checkpoint_s3_bucket": ESCROW})}
        key = f"{path.strip('/')}/{job.name}/output/output.tar.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=output_tarball(members))
        stream = f"{job.name}/algo-1-1767225600"
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": text} for i, text in enumerate(job_log(job))]
        logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)

    fake.when_completed(finish)
    monkeypatch.setenv("TUNELOOP_TEST_BUCKET", bucket)
    monkeypatch.setenv("TUNELOOP_TEST_SAGEMAKER_URL", fake.endpoint)
    monkeypatch.delenv("TUNELOOP_TEST_KUBECONFIG", raising=False)
    return fake


def test_smtj_training_then_evaluation_from_its_checkpoint(
    airflow: Any,
    sagemaker: FakeSageMaker,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One describe per step: the task's submit sees the first Starting, the trigger the rest.
    sagemaker.script_next(STARTING, STARTING, TRAINING, TRAINING, COMPLETED)
    sagemaker.script_next(STARTING, TRAINING, COMPLETED)
    dag = parse("tuneloop_smtj_train_evaluate")
    run = dag.test()
    assert run.state == "success"

    def xcom(task: str) -> Any:
        return airflow.xcom(dag.dag_id, run.run_id, task)

    train, plan = xcom("train"), xcom("plan_sft")
    name = train["name"]
    assert (train["state"], name) == ("SUCCEEDED", plan["name"])
    assert train["result_uri"] == f"s3://{bucket}/smtj/{name}/output/output.tar.gz"
    assert train["billable_seconds"] == sagemaker.billable_seconds
    # The recipe went to S3 where the recipe channel reads it, exactly as planned.
    stored = s3.get_object(Bucket=bucket, Key=f"smtj/{name}/recipe/recipe.yaml")["Body"].read()
    assert yaml.safe_load(stored) == plan["recipe"]
    # The checkpoint came from the manifest inside output.tar.gz, and the evaluation used it.
    assert xcom("checkpoint") == ESCROW
    evaluation = xcom("evaluate")
    eval_name = evaluation["name"]
    assert xcom("plan_eval")["recipe"]["run"]["model_name_or_path"] == ESCROW
    hyperparameters = sagemaker.jobs[eval_name].request["HyperParameters"]
    assert hyperparameters["base_model_location"] == ESCROW
    assert evaluation["metrics"] == METRICS
    # One CreateTrainingJob per job.
    assert sagemaker.calls["CreateTrainingJob"] == 2
    assert sagemaker.creates == {name: 1, eval_name: 1}

    out = capsys.readouterr().out
    assert states_seen(out, name) == ["PENDING", "RUNNING", "SUCCEEDED"], out
    assert f"Job {name} is PENDING: waiting to train (Starting)" in out
    assert f"Job {name} is RUNNING: in progress (Training)" in out
    for job in (name, eval_name):
        for line in job_log(sagemaker.jobs[job]):
            assert printed(out, job, line) == 1, (line, out)

    # The same DAG again: both jobs are found finished and returned; nothing created.
    again = dag.test()
    assert again.state == "success"
    assert airflow.xcom(dag.dag_id, again.run_id, "train")["name"] == name
    assert airflow.xcom(dag.dag_id, again.run_id, "evaluate")["metrics"] == METRICS
    out = capsys.readouterr().out
    for job in (name, eval_name):
        assert f"Adopting job {job} (SUCCEEDED)" in out
    assert sagemaker.calls["CreateTrainingJob"] == 2
    assert sagemaker.creates == {name: 1, eval_name: 1}


# --- the DAG file --------------------------------------------------------------------------------


def test_the_dag_file_defines_nothing_without_its_settings(
    airflow_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    for setting in SETTINGS:
        monkeypatch.delenv(setting, raising=False)
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    assert bag.dags == {}
