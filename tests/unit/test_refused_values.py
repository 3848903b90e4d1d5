"""Values refused where they are written: a schedule Airflow would refuse (or one that never
runs), an output root in the service's escrow bucket, and S3 URIs that only begin like one.

Each gives one located line naming the field, what is allowed and the fix; `campaign validate`
exits 2 with it. The schedules accepted are checked against Airflow's own cron library, so a
campaign that validates always makes a DAG Airflow can schedule.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.config.cron import schedule_problems
from tuneloop.config.file import load_campaign, parse_campaign
from tuneloop.errors import CampaignError, DataLocationError, Problem, RecipeError
from tuneloop.jobs.base import JobKind, JobSpec, UserJobError
from tuneloop.jobs.smtj import training_job_request
from tuneloop.recipes import compat
from tuneloop.recipes.catalog import Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext, check_recipe
from tuneloop.recipes.s3_uri import S3Uri, S3UriError, is_escrow, parse_s3_uri, shown
from tuneloop.rounds.plan import plan_round

REPO = Path(__file__).resolve().parents[2]
CAMPAIGNS = REPO / "recipes" / "campaigns"
DEMO = CAMPAIGNS / "demo.yaml"
CLAIMS = CAMPAIGNS / "examples" / "claims-smtj.yaml"
HYPERPOD = CAMPAIGNS / "examples" / "support-bot-hyperpod.yaml"
SFT_LORA = REPO / "recipes" / "nova" / "nova-2-lite" / "sft-lora.yaml"
LOCAL_SFT = REPO / "recipes" / "local" / "sft-lora.yaml"
ESCROW = "s3://customer-escrow-123456789012-smtj-abcde"


def edited(source: Path, **changes: Any) -> str:
    """The campaign ``source`` with top-level keys (or ``a__b__0__c`` paths) set."""
    data = yaml.safe_load(source.read_text())
    for dotted, value in changes.items():
        *parents, last = [int(p) if p.isdigit() else p for p in dotted.split("__")]
        target = data
        for part in parents:
            target = target[part]
        target[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def refused(text: str, source: Path = CLAIMS) -> Problem:
    """The one problem parsing ``text`` gives, checked to be a single located line."""
    with pytest.raises(CampaignError) as error:
        parse_campaign(text, source)
    [problem] = error.value.problems
    line = problem.format()
    assert "\n" not in line and line.startswith(f"{source}:{problem.line}: ")
    return problem


# --- schedule ----------------------------------------------------------------------------------


def test_a_schedule_out_of_range_names_every_field_and_the_ranges() -> None:
    problem = refused(edited(DEMO, schedule="61 99 * * 9"), DEMO)
    assert problem.path == "schedule"
    for part in ("minute 61", "hour 99", "weekday 9", "fix:"):
        assert part in problem.message
    assert problem.allowed is not None and "minute 0-59, hour 0-23, day 1-31" in problem.allowed


REFUSED_SCHEDULES = {
    "0 0 0 * *": "day 0 is out of range 1-31",
    "0 0 * 13 *": "month 13 is out of range 1-12",
    "0 0 * * 8": "weekday 8 is out of range 0-7",
    "*/0 * * * *": "minute step '0' is out of range",
    "0 */24 * * *": "hour step '24' is out of range",
    "0 0 30 2 *": "day 30 never comes in feb",
    "0 0 31 4,6,9,11 *": "day 31 never comes in apr, jun, sep, nov",
    "0 0 * * mon#6": "week of the month is 1-5",
    "0 0 * * 1#2,5": "only such items",
    "0 0 1 * mon#2": "needs day * or ?",
    "0 0 15W * mon": "needs weekday * or ?",
    "0 0 * * 7-7": "runs from a value to itself",
    "0 0 * * monday": "'monday' is not a weekday",
    "? 0 * * *": "'?' is allowed in day and weekday",
    "0 0 1,,2 * *": "'' is not a value",
    "H * * * *": "'H' is not a minute",
    "0 0 * * * *": "has 6 fields",
    "0 0 * *": "has 4 fields",
    "@dayly": "'@dayly' is not a preset",
    "@daily\n": "is not a preset",
    "0 0 * * *\n": "'*\\n' is not a value",
    " ": "the schedule is empty",
    "1" * 5000 + " * * * *": "minute 111111... is out of range",
}


@pytest.mark.parametrize(("schedule", "reason"), REFUSED_SCHEDULES.items(), ids=repr)
def test_refused_schedules(schedule: str, reason: str) -> None:
    problem = refused(edited(DEMO, schedule=schedule), DEMO)
    assert problem.path == "schedule"
    assert reason in problem.message


ACCEPTED_SCHEDULES = [
    "0 3 * * 1",
    "*/15 * * * *",
    "0 9-17 * * mon-fri",
    "30 22 * * fri-mon",
    "0 0 1 jan,APR,jul,oct *",
    "0 0 1 */3 *",
    "5/10 1-23/2 * * *",
    "0 0 L * *",
    "0 0 1-L/2 * *",
    "0 0 15W * ?",
    "0 0 ? * mon#2",
    "0 0 * * L5,1#1",
    "0 0 29 2 *",
    "0 0 30 2 1",  # the 30th of February never comes, but every Monday does
    "0 0 * * 0-7",
    "00 03 01 01 *",
]


@pytest.mark.parametrize("schedule", ACCEPTED_SCHEDULES)
def test_accepted_schedules_run_under_airflows_cron_library(schedule: str) -> None:
    parse_campaign(edited(DEMO, schedule=schedule), DEMO)
    assert croniter(schedule, datetime(2026, 1, 1)).get_next(datetime) > datetime(2026, 1, 1)


@pytest.mark.parametrize("preset", ["@once", "@hourly", "@daily", "@quarterly", "@annually"])
def test_presets(preset: str) -> None:
    assert parse_campaign(edited(DEMO, schedule=preset), DEMO).campaign.schedule == preset


FIELD_PARTS = [
    ["*", "0", "7", "59", "60", "*/5", "*/0", "10/15", "5-1", "1-5", "3-3", "x", "", "-1", "1/2/3"],
    ["*", "0", "23", "24", "*/2", "9-17", "22-2", "0-23/3", "?"],
    ["*", "?", "0", "1", "15", "29", "30", "31", "32", "L", "15W", "W1", "LW", "1-L", "31-1"],
    ["*", "0", "1", "2", "4", "12", "13", "jan", "FEB", "apr", "nov-feb", "1-12/3", "jan/2"],
    ["*", "?", "0", "7", "8", "sun", "mon-fri", "fri-mon", "7-1", "mon#2", "1#6", "L5", "L8"],
]


@settings(max_examples=400, deadline=None)
@given(st.tuples(*(st.lists(st.sampled_from(p), min_size=1, max_size=3) for p in FIELD_PARTS)))
def test_every_schedule_accepted_is_one_airflow_can_run(fields: tuple[list[str], ...]) -> None:
    schedule = " ".join(",".join(items) for items in fields)
    if not schedule_problems(schedule):
        assert croniter(schedule, datetime(2026, 1, 1)).get_next(datetime)


def test_once_cannot_be_combined_with_data_triggers() -> None:
    text = edited(HYPERPOD, schedule="@once", trigger_on_data=["s3://acme-ml-data/support/"])
    problem = refused(text, HYPERPOD)
    assert problem.path == "trigger_on_data" and "@once" in problem.message
    parse_campaign(edited(HYPERPOD, trigger_on_data=["s3://acme-ml-data/support/"]), HYPERPOD)


# --- escrow ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "root"),
    [
        (CLAIMS, f"{ESCROW}/tuneloop"),
        (HYPERPOD, f"{ESCROW}"),
        (DEMO, f"{ESCROW}/tuneloop"),  # the local backend may write to S3, not to escrow
    ],
    ids=["smtj", "hyperpod", "local"],
)
def test_an_output_root_in_the_escrow_bucket_is_refused(source: Path, root: str) -> None:
    problem = refused(edited(source, backend__output_root=root), source)
    assert problem.path == "backend.output_root"
    assert "escrow bucket" in problem.message and "fix:" in problem.message
    assert problem.allowed is not None and "bucket you own" in problem.allowed


def test_a_declared_base_checkpoint_names_the_job_output_not_the_escrow_checkpoint() -> None:
    base = {"output_uri": f"{ESCROW}/job/step5", "technique": "full", "trained_with": ["sft"]}
    problem = refused(edited(CLAIMS, base_model=base))
    assert problem.path == "base_model.output_uri" and "output folder" in problem.message


def test_escrow_behind_user_info_is_still_escrow() -> None:
    uri = "s3://me@customer-escrow-1-hp-x/train.jsonl"
    assert is_escrow(uri) and is_escrow(" S3://Customer-Escrow-1/x") and not is_escrow("s3://a-b/x")
    assert compat.ESCROW_BUCKET.match(uri)
    with pytest.raises(DataLocationError) as error:
        compat.check_data_location(uri, path="data_s3_path")
    assert "me@" not in str(error.value)


# --- S3 URIs -----------------------------------------------------------------------------------

BAD_URIS = {
    "s3:///x.jsonl": "names no bucket",
    "s3://": "names no bucket",
    f"s3://me@{ESCROW[5:]}/x.jsonl": "user info",
    "s3://acme-ml-data:443/x.jsonl": "port",
    "s3://acme-ml-data/x.jsonl?versionId=3": "query string",
    "s3://acme-ml-data/x.jsonl#part": "fragment",
    "s3://acme ml-data/x.jsonl": "' ' at position 9",
    "s3://acme-ml-data/x\t.jsonl": "'\\t'",
    "s3://acme-ml-data/x.jsonl\n": "'\\n'",
    "s3://acme-ml-data/x\x00.jsonl": "'\\x00'",
    "s3://acme-ml-data/x\u200b.jsonl": "'\\u200b'",
    "s3://ab/x.jsonl": "2 characters long",
    "s3://" + "a" * 64 + "/x": "64 characters long",
    "s3://Bad_Bucket/x.jsonl": "other than lowercase letters",
    "s3://-acme/x.jsonl": "begin and end with a letter or digit",
    "s3://acme../x.jsonl": "begin and end",
    "s3://acme..data/x.jsonl": "two periods",
    "s3://192.168.1.10/x.jsonl": "IP address",
    "S3://acme-ml-data/x.jsonl": "does not begin with s3://",
    "s3:/acme-ml-data/x.jsonl": "does not begin with s3://",
    "s3://acme-ml-data/" + "k" * 1025: "longer than 1024 bytes",
}


@pytest.mark.parametrize(("uri", "reason"), BAD_URIS.items(), ids=repr)
def test_s3_uri_rules(uri: str, reason: str) -> None:
    with pytest.raises(S3UriError) as error:
        parse_s3_uri(uri)
    assert reason in error.value.reason and error.value.fix


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://acme-ml-data/claims/train.jsonl", "acme-ml-data", "claims/train.jsonl"),
        ("s3://my.bucket.name", "my.bucket.name", ""),
        (f"{ESCROW}/job/step5", ESCROW[5:], "job/step5"),
        ("s3://abc/a b", None, None),  # a space in the key is refused too
    ],
)
def test_valid_s3_uris(uri: str, bucket: str | None, key: str | None) -> None:
    if bucket is None:
        with pytest.raises(S3UriError):
            parse_s3_uri(uri)
    else:
        assert parse_s3_uri(uri) == S3Uri(bucket, key or "")


CAMPAIGN_URI_FIELDS = {
    "backend.output_root": {"backend__output_root": "{uri}"},
    "stages[0].datasets.train": {"stages__0__datasets__train": "{uri}"},
    "stages[0].datasets.validation": {"stages__0__datasets__validation": "{uri}"},
    "evaluation.dataset": {"evaluation__dataset": "{uri}"},
    "base_model": {"base_model": "{uri}"},
    "base_model.output_uri": {
        "base_model": {"output_uri": "{uri}", "technique": "full", "trained_with": ["sft"]}
    },
    "trigger_on_data": {"trigger_on_data": ["{uri}"]},
}


def _filled(value: Any, uri: str) -> Any:
    if isinstance(value, dict):
        return {k: _filled(v, uri) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, uri) for v in value]
    return uri if value == "{uri}" else value


@pytest.mark.parametrize("field", CAMPAIGN_URI_FIELDS)
@pytest.mark.parametrize(
    "uri",
    ["s3:///x.jsonl", f"s3://me@{ESCROW[5:]}/x.jsonl", "s3://acme-ml-data/x.jsonl?versionId=3"],
    ids=["no bucket", "user info", "query"],
)
def test_every_campaign_s3_field_checks_the_whole_uri(field: str, uri: str) -> None:
    problem = refused(edited(CLAIMS, **_filled(CAMPAIGN_URI_FIELDS[field], uri)))
    assert problem.path == field
    assert "is not a valid S3 URI" in problem.message and "fix:" in problem.message


def test_user_info_is_never_printed() -> None:
    uri = "s3://admin:hunter2-secret@acme-ml-data/x.jsonl"
    problem = refused(edited(CLAIMS, stages__0__datasets__train=uri))
    assert "hunter2" not in problem.format() and "admin" not in problem.format()
    assert "s3://***@acme-ml-data/x.jsonl" in problem.message
    assert shown(uri) == "'s3://***@acme-ml-data/x.jsonl'"
    assert shown("S3://admin:pw@acme-ml-data/x") == "'S3://***@acme-ml-data/x'"
    assert len(shown("s3://acme-ml-data/" + "k" * 100_000)) < 300  # one readable line


def test_a_templated_data_uri_is_checked_once_rendered(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    train = "s3://acme ml-data/support/{{ ds }}/sft-train.jsonl"
    path.write_text(edited(HYPERPOD, stages__0__datasets__train=train))
    load_campaign(path)  # the template is not checked before it renders
    with pytest.raises(CampaignError) as error:
        plan_round(load_campaign(path))
    [problem] = error.value.problems
    assert problem.path == "stages[0].datasets.train" and problem.source == str(path)
    assert "is not a valid S3 URI" in problem.message and "' ' at position 9" in problem.message


@pytest.mark.parametrize(
    "field",
    ["run.data_s3_path", "run.validation_data_s3_path", "run.output_s3_path"],
)
@pytest.mark.parametrize("uri", ["s3:///x", "s3://acme-ml-data:9000/x", "s3://ACME/x"])
def test_recipe_s3_fields_check_the_whole_uri(field: str, uri: str) -> None:
    with pytest.raises(RecipeError) as error:
        render_recipe(SFT_LORA, {field: uri}, context=RecipeContext(template=True))
    assert any(
        p.path == field and "is not a valid S3 URI" in p.message for p in error.value.problems
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run.model_name_or_path", "s3:///step5"),
        ("run.validation_data_s3_path_list", {"extra": "s3://me@acme-ml-data/v.jsonl"}),
    ],
)
def test_recipe_checkpoint_and_validation_list_check_the_whole_uri(field: str, value: Any) -> None:
    with pytest.raises(RecipeError) as error:
        render_recipe(SFT_LORA, {field: value}, context=RecipeContext(template=True))
    assert any("is not a valid S3 URI" in p.message for p in error.value.problems)


def test_a_recipe_may_start_from_an_escrow_checkpoint() -> None:
    rendered = render_recipe(
        SFT_LORA,
        {"run.model_name_or_path": f"{ESCROW}/job/step5"},
        context=RecipeContext(template=True),
    )
    assert rendered.data["run"]["model_name_or_path"] == f"{ESCROW}/job/step5"


def _rules_errors(recipe: Path, platform: Platform, **run: str) -> dict[str, str]:
    """The contextual rules' errors (dotted field -> message) for ``recipe`` with ``run``'s
    fields set after validation: the rules judge a URI on their own, not only behind the
    recipe model (a value with a template, or a model built elsewhere, reaches them unchecked)."""
    ctx = RecipeContext(platform=platform, template=True)
    rendered = render_recipe(recipe, context=ctx)
    recipe_run = rendered.model.run  # type: ignore[attr-defined]
    model = rendered.model.model_copy(update={"run": recipe_run.model_copy(update=run)})
    found = check_recipe(model, rendered.method, ctx)
    return {".".join(map(str, f.loc)): f.message for f in found.errors}


@pytest.mark.parametrize(
    ("field", "uri", "reason"),
    [
        ("data_s3_path", "s3://admin:pw-secret@acme-ml-data/x.jsonl", "has user info"),
        ("validation_data_s3_path", "s3:///x.jsonl", "names no bucket"),
        ("output_s3_path", "s3://acme-ml-data:9000/out/", "has a port"),
        ("model_name_or_path", "s3://Bad_Bucket/step5", "other than lowercase letters"),
    ],
)
def test_the_recipe_rules_check_the_whole_s3_uri(field: str, uri: str, reason: str) -> None:
    errors = _rules_errors(SFT_LORA, Platform.HYPERPOD, **{field: uri})
    message = errors[f"run.{field}"]
    assert "is not a valid S3 URI" in message and reason in message
    assert "admin" not in message and "pw-secret" not in message


def test_the_recipe_rules_leave_a_templated_uri_to_its_rendering() -> None:
    errors = _rules_errors(SFT_LORA, Platform.HYPERPOD, data_s3_path="s3://acme/{{ ds }}/x")
    assert "run.data_s3_path" not in errors


def test_the_local_backend_refuses_an_s3_uri_however_it_is_written() -> None:
    errors = _rules_errors(LOCAL_SFT, Platform.LOCAL, data_s3_path="S3://me@acme-ml-data/x")
    assert errors["run.data_s3_path"].startswith("'S3://***@acme-ml-data/x' is on S3")


def _smtj_spec(**changes: Any) -> JobSpec:
    body = yaml.safe_load(SFT_LORA.read_text(encoding="utf-8"))
    body["run"].update(changes.pop("run", {}))
    fields: dict[str, Any] = {
        "name": "demo-r0001-sft",
        "kind": JobKind.TRAIN,
        "method": "sft",
        "recipe": body,
        "inputs": {"train": "s3://acme-ml-data/train.jsonl"},
        "output_uri": "s3://acme-ml-data/outputs",
        **changes,
    }
    return JobSpec(**fields)


@pytest.mark.parametrize(
    ("changes", "what", "reason"),
    [
        ({"output_uri": "s3://me@acme-ml-data/outputs"}, "output_uri", "user info"),
        ({"output_uri": "s3:///outputs"}, "output_uri", "names no bucket"),
        ({"inputs": {"train": "s3://acme-ml-data:443/t.jsonl"}}, "input train =", "port"),
        ({"inputs": {"train": f"s3://me@{ESCROW[5:]}/t.jsonl"}}, "input train =", "user info"),
        (
            {"run": {"model_name_or_path": "s3://acme ml/step5"}},
            "run.model_name_or_path",
            "' ' at position 9",
        ),
    ],
    ids=["output user info", "output no bucket", "input port", "input user info", "base space"],
)
def test_a_training_job_request_refuses_an_invalid_s3_uri(
    changes: dict[str, Any], what: str, reason: str
) -> None:
    with pytest.raises(UserJobError) as error:
        training_job_request(
            _smtj_spec(**changes),
            region="us-east-1",
            role_arn="arn:aws:iam::123456789012:role/nova-training",
            instance_type="ml.p5.48xlarge",
            max_runtime_seconds=7200,
        )
    [problem] = error.value.problems
    assert f"{what} '" in problem.message and "is not a valid S3 URI" in problem.message
    assert reason in problem.message and problem.fix
    assert "me@" not in str(error.value)


def test_a_training_job_input_that_is_no_s3_uri_hides_its_user_info() -> None:
    spec = _smtj_spec(inputs={"train": "https://admin:pw-Lq2-secret@data.example.com/t.jsonl"})
    with pytest.raises(UserJobError) as error:
        training_job_request(
            spec,
            region="us-east-1",
            role_arn="arn:aws:iam::123456789012:role/nova-training",
            instance_type="ml.p5.48xlarge",
            max_runtime_seconds=7200,
        )
    assert "input train = 'https://admin:***@data.example.com/t.jsonl' is not an s3:// URI" in (
        str(error.value)
    )
    assert "pw-Lq2" not in str(error.value)


# --- through the command -----------------------------------------------------------------------


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2_000_000_000, 2_000_000_000))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schedule": "61 99 * * 9"}, "schedule"),
        ({"backend__output_root": f"{ESCROW}/tuneloop"}, "backend.output_root"),
        ({"stages__0__datasets__train": "s3:///x.jsonl"}, "stages[0].datasets.train"),
    ],
    ids=["schedule", "escrow output root", "no bucket"],
)
def test_campaign_validate_exits_2_with_one_line(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text(edited(CLAIMS, **change))
    result = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", "campaign", "validate", str(path), "--offline"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}:") and f" {field}: " in line and "(allowed: " in line
