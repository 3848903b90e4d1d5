"""The round DAG end to end with Airflow's dag.test(): every decision, the ledger, MLflow and the
conf of the run each round triggers.

Jobs run on the local backend as real job processes; the instant entry point
(``fakes.instant_jobs``) writes what a training or evaluation job writes, with metrics scripted
per round, so a round takes seconds. ``test_real_local_round`` runs one round with the real
trainer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneloop.local.demo_task import write_demo_data

DAGS = Path(__file__).resolve().parent / "dags"
TESTS = Path(__file__).resolve().parents[1]
CAMPAIGNS = Path(os.environ.setdefault("TUNELOOP_TEST_CAMPAIGNS", tempfile.mkdtemp()))
SIZES = {"train": 40, "validation": 8, "test": 8, "eval": 16, "rft": 16, "cpt": 8}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("round-data")
    write_demo_data(folder, sizes=SIZES)
    return folder


@pytest.fixture(autouse=True)
def _own_campaign_files() -> Iterator[None]:
    """Each test's campaign files are gone after it, so other tests parse only their own."""
    yield
    for path in CAMPAIGNS.glob("*.yaml"):
        path.unlink()


def campaign_text(
    name: str, root: Path, data: Path, gate: str, *, fake: bool = True, extra: str = ""
) -> str:
    entry = f"  entrypoint: fakes.instant_jobs:run\n  python_path: [{TESTS}]\n" if fake else ""
    return f"""
name: {name}
backend:
  type: local
  output_root: {root}
{entry}model_type: local.tiny-chat-v1
technique: full
stages:
  - method: sft
    recipe: local/sft-full.yaml
    datasets: {{train: {data}/sft-train.jsonl}}
{extra}  - method: rft
    recipe: local/rft-full.yaml
    datasets: {{train: {data}/rft-train.jsonl}}
    reward_function: tuneloop.local.demo_task:reward
evaluation:
  recipe: local/eval-gen-qa.yaml
  dataset: {data}/eval.jsonl
  metrics: [exact_match]
gate:
  primary_metric: exact_match
{gate}"""


class Campaign:
    """One campaign file, its DAG, and what its rounds leave behind."""

    def __init__(self, name: str, root: Path, text: str, metrics: dict[str, float]) -> None:
        self.name, self.root = name, root
        (CAMPAIGNS / f"{name}.yaml").write_text(text, encoding="utf-8")
        script: dict[str, Any] = {"*": {"metrics": {"exact_match": metrics.pop("base", 0.1)}}}
        for number, value in metrics.items():
            script[f"round={number},stage=eval"] = {"metrics": {"exact_match": value}}
        self.script = root / "fake-jobs.json"
        root.mkdir(parents=True, exist_ok=True)
        self.script.write_text(json.dumps(script), encoding="utf-8")

    @property
    def dag_id(self) -> str:
        return "tuneloop_" + self.name.replace("-", "_")

    def dag(self) -> Any:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS / "tuneloop_test_rounds.py"))
        assert not bag.import_errors, bag.import_errors
        return bag.dags[self.dag_id]

    def run(self, conf: dict[str, Any] | None = None) -> Any:
        os.environ["TUNELOOP_FAKE_JOBS"] = str(self.script)
        return self.dag().test(run_conf=conf or {}, logical_date=None)

    def run_on(self, logical_date: Any) -> Any:
        os.environ["TUNELOOP_FAKE_JOBS"] = str(self.script)
        return self.dag().test(run_conf={}, logical_date=logical_date)

    def ledger(self) -> Any:
        from tuneloop.rounds.ledger import Ledger

        return Ledger(str(self.root / self.name))

    def triggered(self, run_id: str) -> dict[str, Any] | None:
        """The conf of the run the round's next_round/rollback task triggered (None: none)."""
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            run = session.query(DagRun).filter_by(dag_id=self.dag_id, run_id=run_id).one_or_none()
            return None if run is None else dict(run.conf or {})

    def task_states(self, run: Any) -> dict[str, str]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.query(TaskInstance).filter_by(dag_id=self.dag_id, run_id=run.run_id)
            return {ti.task_id: str(ti.state) for ti in rows}

    def mlflow_runs(self) -> list[Any]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{self.root / self.name / 'mlflow.db'}")
        return client.search_runs(
            [e.experiment_id for e in client.search_experiments()], max_results=100
        )

    def xcom(self, run: Any, task_id: str, key: str = "return_value") -> Any:
        """What a task of ``run`` pushed to XCom, as stored."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            value = session.scalar(
                select(XComModel.value).where(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == run.run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == key,
                )
            )
        return json.loads(value) if isinstance(value, str) else value

    def jobs(self) -> list[str]:
        folder = self.root / self.name / "jobs"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


GATE = """  targets: {exact_match: 0.9}
  regression_tolerance: 0.02
  max_rounds: 5
"""


def test_continue_then_rollback_then_finish(airflow_db: Path, tmp_path: Path, data: Path) -> None:
    """Round 1 improves (continue), round 2 regresses (rollback to round 1 at half the learning
    rate), round 3 meets the target (finish): each round is the run the previous one triggered."""
    campaign = Campaign(
        "cycle",
        tmp_path,
        campaign_text("cycle", tmp_path, data, GATE),
        {1: 0.5, 2: 0.3, 3: 0.95},
    )
    first = campaign.run()
    assert first.state == "success"
    states = campaign.task_states(first)
    assert states["next_round"] == "success" and states["finish"] == "skipped"
    assert states["rollback"] == "skipped"
    ledger = campaign.ledger()
    one = ledger.read(1)
    assert one.decision.action == "continue" and one.decision.promoted
    assert one.metrics["exact_match"] == 0.5 and one.baseline["exact_match"] == 0.1
    assert one.deltas["baseline"]["exact_match"] == pytest.approx(0.4)
    assert [s.name for s in one.stages] == ["sft", "rft"]
    assert {d.channel for d in one.datasets} == {"train", "eval"}
    conf = campaign.triggered("round_0002__after_0001")
    assert conf is not None
    assert conf["base_checkpoint"] == one.stages[-1].output_uri
    assert conf["rollback"] is False

    second = campaign.run(conf)
    assert second.state == "success"
    two = ledger.read(2)
    assert two.base_round == 1 and two.base == one.stages[-1].output_uri
    assert two.decision.action == "rollback"
    assert "regressed" in two.decision.reason
    assert campaign.task_states(second)["rollback"] == "success"
    conf = campaign.triggered("round_0003__after_0002")
    assert conf is not None and conf["rollback"] is True
    assert conf["base_checkpoint"] == one.stages[-1].output_uri

    third = campaign.run(conf)
    assert third.state == "success"
    three = ledger.read(3)
    assert three.rollback_of == 2 and three.base_round == 1
    lr_one = one.stages[0].recipe["training_config"]["optim_config"]["lr"]
    lr_three = three.stages[0].recipe["training_config"]["optim_config"]["lr"]
    assert lr_three == pytest.approx(lr_one / 2)
    assert three.decision.action == "finish" and three.decision.promoted
    assert campaign.task_states(third)["finish"] == "success"
    assert campaign.triggered("round_0004__after_0003") is None
    assert ledger.champion().round == 3

    # The base model was evaluated once for the whole campaign (its job is reused by name).
    assert sum(name.startswith("cycle-r0-baseline") for name in campaign.jobs()) == 1
    # MLflow mirrors the ledger: a campaign run, a run per round, nested stage runs.
    runs = campaign.mlflow_runs()
    kinds = [r.data.tags.get("tuneloop.kind") for r in runs]
    assert kinds.count("campaign") == 1 and kinds.count("round") == 3
    assert kinds.count("stage") == 6
    report = tmp_path / "cycle" / "report"
    assert (report / "report.md").is_file() and (report / "report.png").is_file()


def test_a_round_is_judged_by_the_campaign_file_it_was_planned_with(
    airflow_db: Path, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plan_round reads the campaign file once and snapshots it: an edit while the round runs
    (here a higher target, written while the round's data is validated) does not change how
    that round is judged. The next round plans with the edited file."""
    import hashlib

    from tuneloop.rounds import datasets

    gate = "  targets: {exact_match: 0.9}\n  max_rounds: 5\n"
    text = campaign_text("snapshot", tmp_path, data, gate)
    campaign = Campaign("snapshot", tmp_path, text, {1: 0.95, 2: 0.995})
    path = CAMPAIGNS / "snapshot.yaml"
    edited = text.replace("targets: {exact_match: 0.9}", "targets: {exact_match: 0.99}")
    assert edited != text
    check = datasets.validate_dataset

    def check_then_edit(item: Any) -> Any:
        path.write_text(edited, encoding="utf-8")  # the campaign file changes mid-round
        return check(item)

    monkeypatch.setattr(datasets, "validate_dataset", check_then_edit)
    first = campaign.run()
    monkeypatch.undo()
    assert first.state == "success"
    assert path.read_text(encoding="utf-8") == edited
    planned = campaign.xcom(first, "plan_round", key="round")
    assert planned["campaign"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert planned["campaign"]["text"] == text
    # Judged by the target it was planned with (0.9): finished. The edited file's 0.99 would
    # have said continue.
    one = campaign.ledger().read(1)
    assert one.campaign_sha256 == planned["campaign"]["sha256"]
    assert one.decision.action == "finish", one.decision.reason
    assert "exact_match 0.95 ≥ 0.9" in one.decision.reason
    assert campaign.task_states(first)["finish"] == "success"

    # The edited target reopens the campaign: round 2 plans and is judged with the new file.
    second = campaign.run()
    assert second.state == "success"
    planned = campaign.xcom(second, "plan_round", key="round")
    assert planned["campaign"]["sha256"] == hashlib.sha256(edited.encode()).hexdigest()
    two = campaign.ledger().read(2)
    assert two.campaign_sha256 == hashlib.sha256(edited.encode()).hexdigest()
    assert two.base_round == 1
    assert two.decision.action == "finish", two.decision.reason
    assert "exact_match 0.995 ≥ 0.99" in two.decision.reason


def test_stop_at_max_rounds(airflow_db: Path, tmp_path: Path, data: Path) -> None:
    gate = "  targets: {exact_match: 0.9}\n  max_rounds: 1\n  budget: {usd: 500, gpu_hours: 10}\n"
    campaign = Campaign(
        "stopper", tmp_path, campaign_text("stopper", tmp_path, data, gate), {1: 0.5}
    )
    run = campaign.run()
    assert run.state == "success"
    record = campaign.ledger().read(1)
    assert record.decision.action == "stop"
    assert "1" in record.decision.reason
    states = campaign.task_states(run)
    assert states["finish"] == "success" and states["next_round"] == "skipped"
    assert campaign.triggered("round_0002__after_0001") is None
    # What the round cost (test_round_cost reads it): kept here, where a round already runs.
    from test_round_cost import check_local_costs

    check_local_costs(campaign, tmp_path / "stopper", record)


def test_dry_run_submits_nothing(airflow_db: Path, tmp_path: Path, data: Path) -> None:
    campaign = Campaign("dry", tmp_path, campaign_text("dry", tmp_path, data, GATE), {1: 0.5})
    run = campaign.run({"dry_run": True})
    states = campaign.task_states(run)
    assert states["plan_round"] == "success" and states["proceed"] == "success"
    assert states["train_sft"] == "skipped" and states["decide"] == "skipped"
    assert campaign.jobs() == []
    assert campaign.ledger().records() == []


def test_a_run_of_some_stages_passes_the_checkpoint_through(
    airflow_db: Path, tmp_path: Path, data: Path
) -> None:
    campaign = Campaign("partial", tmp_path, campaign_text("partial", tmp_path, data, GATE), {})
    run = campaign.run({"stages": ["sft"]})
    assert run.state == "success"
    states = campaign.task_states(run)
    assert states["train_sft"] == "success" and states["train_rft"] == "skipped"
    assert states["checkpoint_rft"] == "success" and states["decide"] == "success"
    record = campaign.ledger().read(1)
    assert [s.name for s in record.stages] == ["sft"]
    evaluated = record.plan["evaluation"]["recipe"]["run"]["model_name_or_path"]
    assert evaluated.startswith("@checkpoint:")  # the plan; the job got the SFT checkpoint:
    assert record.evaluation["job_name"].startswith("partial-r1-eval-")
    assert not any(name.startswith("partial-r1-rft") for name in campaign.jobs())


def test_invalid_data_fails_before_any_job(airflow_db: Path, tmp_path: Path, data: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n', encoding="utf-8")
    text = campaign_text("baddata", tmp_path, data, GATE).replace(
        f"{data}/sft-train.jsonl", str(bad)
    )
    campaign = Campaign("baddata", tmp_path, text, {1: 0.5})
    run = campaign.run()
    assert run.state == "failed"
    states = campaign.task_states(run)
    assert states["train_sft"] in ("upstream_failed", "skipped")
    assert campaign.jobs() == []


BROKEN_CAMPAIGNS = {
    # file -> (what replaces "technique: full" in a good campaign, the line the error names (its
    # start), what the error says there)
    "typo.yaml": ("technique: x", "technique", "technique: Input should be 'full' or 'lora'"),
    "date.yaml": (
        "technique: full\nstart_date: 2026-13-45",
        "start_date",
        "start_date: not valid YAML: cannot read '2026-13-45'",
    ),
    "alias.yaml": ("technique: full\ntags: &t [a, *t]", "tags", "tags[1]: a recursive alias"),
    "pytag.yaml": (
        "technique: !!python/object/apply:os.system ['true']",
        "technique",
        "technique: not valid YAML: could not determine a constructor",
    ),
    "intkey.yaml": ("technique: full\nint: 3", "int", "int: unknown field"),
}


def test_broken_campaign_files_cost_only_their_own_dags(
    airflow_db: Path, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dags/tuneloop_rounds.py builds one DAG per campaign file. Parsed and serialized the way
    the dag-processor does it, every broken file (any kind of error, or a second file reusing a
    campaign name) is an import error of that campaign file, naming its line and field; the DAG
    file itself has none, so the good campaign's DAG is serialized and stays active."""
    import structlog
    from airflow.dag_processing.dagbag import DagBag
    from airflow.dag_processing.processor import _serialize_dags

    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "good.yaml").write_text(campaign_text("good", tmp_path, data, GATE))
    lines = {}
    for name, (replacement, starts, _) in BROKEN_CAMPAIGNS.items():
        text = campaign_text(name.removesuffix(".yaml"), tmp_path, data, GATE)
        text = text.replace("technique: full", replacement)
        (folder / name).write_text(text)
        lines[name] = next(
            n for n, line in enumerate(text.splitlines(), 1) if line.startswith(starts + ":")
        )
    (folder / "zcopy.yaml").write_text(campaign_text("good", tmp_path, data, GATE))
    monkeypatch.setenv("TUNELOOP_CAMPAIGNS_DIR", str(folder))

    dag_file = DAGS.parents[2] / "dags" / "tuneloop_rounds.py"
    bag = DagBag(dag_folder=str(dag_file))
    assert bag.import_errors == {}
    serialized, errors = _serialize_dags(bag, structlog.get_logger())
    assert [dag.dag_id for dag in serialized] == ["tuneloop_good"]
    assert set(errors) == {str(folder / name) for name in [*BROKEN_CAMPAIGNS, "zcopy.yaml"]}
    for name, (*_, expected) in BROKEN_CAMPAIGNS.items():
        message = errors[str(folder / name)]
        assert f"{folder / name}:{lines[name]}: {expected}" in message, message
    assert "campaign name 'good' is also used by" in errors[str(folder / "zcopy.yaml")]


def test_the_repository_campaigns_load(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS.parents[2] / "dags"))
    assert not bag.import_errors
    assert "tuneloop_demo" in bag.dags
    demo = bag.dags["tuneloop_demo"]
    assert demo.max_active_runs == 1
    assert {"plan_round", "validate_data", "train_sft", "checkpoint_rft", "decide"} <= set(
        demo.task_dict
    )
    # The trigger form: every Param is optional (null allowed, or a non-null default), so the
    # form opens without errors; the Params are exactly what plan_round accepts.
    from tuneloop.rounds.boxes import RoundConf

    assert list(demo.params) == list(RoundConf.model_fields)
    for name in demo.params:
        param = demo.params.get_param(name)
        types = param.schema.get("type")
        assert param.value is not None or "null" in types, name
    demo.params.validate()  # the defaults pass Airflow's own JSON-schema check
    assert demo.task_dict["wait_for_earlier_rounds"].downstream_task_ids == {"plan_round"}


def test_each_interval_trains_on_its_own_data(airflow_db: Path, tmp_path: Path, data: Path) -> None:
    """What a backfill does: one round per logical date, in order, each rendering
    ``{{ ds }}`` in its data URIs; round numbers come from the ledger."""
    from datetime import UTC, datetime

    for day in ("2026-11-01", "2026-11-02"):
        folder = tmp_path / "landing" / day
        folder.mkdir(parents=True)
        (folder / "sft-train.jsonl").write_bytes((data / "sft-train.jsonl").read_bytes())
    text = campaign_text("daily", tmp_path, data, GATE).replace(
        f"{data}/sft-train.jsonl", f"'{tmp_path}/landing/{{{{ ds }}}}/sft-train.jsonl'"
    )
    campaign = Campaign("daily", tmp_path, text, {1: 0.5, 2: 0.6})
    for day in (1, 2):
        run = campaign.run_on(datetime(2026, 11, day, tzinfo=UTC))
        assert run.state == "success"
    records = campaign.ledger().records()
    assert [r.round for r in records] == [1, 2]
    trained_on = [next(d.uri for d in r.datasets if d.stage == "sft") for r in records]
    assert trained_on == [
        f"{tmp_path}/landing/2026-11-01/sft-train.jsonl",
        f"{tmp_path}/landing/2026-11-02/sft-train.jsonl",
    ]


@pytest.mark.parametrize(
    ("run_type", "chained"),
    [("manual", True), ("operator_triggered", True), ("backfill", False), ("scheduled", False)],
)
def test_only_manual_rounds_trigger_the_next_one_at_once(
    airflow_db: Path, tmp_path: Path, data: Path, run_type: str, chained: bool
) -> None:
    """A backfill or a schedule already starts one round per interval: their rounds do not
    also start the next round at once (the ledger carries the decision to the next interval)."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    campaign = Campaign("chain", tmp_path, campaign_text("chain", tmp_path, data, GATE), {})
    operator = campaign.dag().task_dict["next_round"]
    context = {"dag_run": SimpleNamespace(run_type=run_type)}
    if chained:
        # Past the check it needs a running task; reaching it is what this test asserts.
        with pytest.raises(Exception) as raised:
            operator.execute(context)
        assert not isinstance(raised.value, AirflowSkipException)
    else:
        with pytest.raises(AirflowSkipException, match=f"{run_type} run"):
            operator.execute(context)


def test_real_local_round(airflow_db: Path, tmp_path: Path, data: Path) -> None:
    """One round with the embedded trainer (tiny model, a few steps): real checkpoints, real
    evaluation, a decision."""
    gate = "  targets: {exact_match: 0.99}\n  max_rounds: 3\n"
    text = campaign_text("real", tmp_path, data, gate, fake=False)
    text = text.replace(
        "    datasets: {train: " + f"{data}/sft-train.jsonl}}\n",
        "    datasets: {train: "
        + f"{data}/sft-train.jsonl}}\n    overrides: {{training_config.max_steps: 8}}\n",
    ).replace(
        "    reward_function: tuneloop.local.demo_task:reward\n",
        "    reward_function: tuneloop.local.demo_task:reward\n"
        "    overrides: {training_config.trainer.max_steps: 5}\n",
    )
    campaign = Campaign("real", tmp_path, text, {})
    run = campaign.run()
    assert run.state == "success"
    record = campaign.ledger().read(1)
    assert [s.checkpoint.lineage for s in record.stages] == [("sft",), ("sft", "rft")]
    assert "exact_match" in record.metrics and "exact_match" in record.baseline
    assert record.decision.action in ("continue", "rollback", "stop")
    assert record.timings["train sft"] > 0
    # What the round watched: each stage's curves, read live and from its output folder; the
    # probe of the RFT stage's reward function; the base model's share of positive rewards
    # (its evaluation answers scored by that function: the untrained model scores none).
    sft, rft = record.stages
    assert [step for step, _ in sft.series["train_loss"]][-1] == 8
    assert [step for step, _ in rft.series["reward_mean"]] == [1, 2, 3, 4, 5]
    assert {"reward_std", "reward_error_rate", "reward_high"} <= set(rft.series)
    (probe,) = record.probes
    assert probe["ok"] and probe["function"] == "tuneloop.local.demo_task:reward"
    (baseline,) = [json.loads(f.read_text()) for f in tmp_path.rglob("baselines/*.json")]
    assert baseline["positive_reward_fraction"] == 0.0
