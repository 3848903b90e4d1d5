"""`tuneloop data validate` and `tuneloop data rules`: exit 0 valid, 1 invalid, 2 usage error,
and never a traceback for a user mistake."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tuneloop.cli.main import main
from tuneloop.data.report import DatasetReport
from tuneloop.data.rules import RELAXABLE, RULES

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
VALID = str(CORPUS / "sft/valid_text.jsonl")
INVALID = str(CORPUS / "sft/role_two_users.jsonl")
TOKENS = str(CORPUS / "sft/reserved_tokens.jsonl")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def validate(capsys, file: str, *flags: str, model: str = "lite") -> tuple[int, str, str]:
    return run(capsys, "data", "validate", file, "--format", "sft", "--model", model, *flags)


def as_report(out: str) -> DatasetReport:
    return DatasetReport.from_json(out)


def test_valid_file_exits_0(capsys) -> None:
    code, out, err = validate(capsys, VALID)
    assert code == 0, err
    assert out.startswith(f"{VALID}: VALID (sft for amazon.nova-lite-v1:0:300k on sagemaker)")
    assert "records: 10 (10 valid, 0 invalid), duplicates: 0" in out
    assert "sha256: " in out
    assert err == ""


def test_invalid_file_exits_1(capsys) -> None:
    code, out, err = validate(capsys, INVALID)
    assert code == 1
    assert ": INVALID " in out
    assert f"{INVALID}:2: $.messages[1].role: [role-order]" in out
    assert err == ""


def test_text_report_names_the_allow_flag(capsys) -> None:
    code, out, _ = validate(capsys, TOKENS, "--max-errors", "3")
    assert code == 1
    assert "reserved-token: 9  (relax with --allow reserved-token)" in out
    assert "first 3 of 9 errors:" in out
    code, out, _ = validate(capsys, TOKENS, "--allow", "reserved-token")
    assert code == 0
    assert "relaxed: reserved-token" in out and "warnings by rule:" in out


def test_json_output_parses_into_a_report(capsys) -> None:
    code, out, _ = validate(capsys, TOKENS, "--json", "--max-errors", "2", "--max-length", "64")
    assert code == 1
    report = as_report(out)
    assert not report.ok
    assert [issue.line for issue in report.errors] == [2, 3]
    assert report.error_counts == {"reserved-token": 9}
    assert report.tokens.max_length == 64
    assert report.uri == TOKENS
    data = (CORPUS / "sft/reserved_tokens.jsonl").read_bytes()
    assert report.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("alias", "model_type"),
    [
        ("micro", "amazon.nova-micro-v1:0:128k"),
        ("lite", "amazon.nova-lite-v1:0:300k"),
        ("pro", "amazon.nova-pro-v1:0:300k"),
        ("lite-2", "amazon.nova-2-lite-v1:0:256k"),
        ("nova-2-lite", "amazon.nova-2-lite-v1:0:256k"),
        ("amazon.nova-pro-v1:0:300k", "amazon.nova-pro-v1:0:300k"),
        ("local.tiny-chat-v1", "local.tiny-chat-v1"),
    ],
)
def test_model_aliases(capsys, alias: str, model_type: str) -> None:
    code, out, err = validate(capsys, VALID, "--json", model=alias)
    assert code == 0, err
    assert as_report(out).model_type == model_type


def test_model_decides_the_verdict(capsys) -> None:
    webp = str(CORPUS / "sft/valid_image_webp.jsonl")
    assert validate(capsys, webp, model="lite")[0] == 0
    assert validate(capsys, webp, model="lite-2")[0] == 1
    images = str(CORPUS / "sft/valid_images.jsonl")
    assert validate(capsys, images, model="pro")[0] == 0
    assert validate(capsys, images, model="micro")[0] == 1


def test_platform_and_role(capsys) -> None:
    seven = str(CORPUS / "sft/sample_count_7.jsonl")
    assert validate(capsys, seven)[0] == 0
    code, out, _ = validate(capsys, seven, "--platform", "bedrock", "--json")
    assert code == 1 and as_report(out).error_counts == {"sample-count": 1}
    code, out, _ = validate(
        capsys, seven, "--platform", "bedrock", "--role", "validation", "--json", model="lite-2"
    )
    assert code == 1 and as_report(out).error_counts == {"not-supported": 1}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_workers_flag_gives_the_same_report(capsys, workers: str) -> None:
    mixed = str(CORPUS / "sft/mixed_modality.jsonl")
    _, one, _ = validate(capsys, mixed, "--json")
    code, many, _ = validate(capsys, mixed, "--json", "--workers", workers)
    assert code == 1
    assert as_report(many).to_dict(exclude={"seconds"}) == as_report(one).to_dict(
        exclude={"seconds"}
    )


# --- usage errors: exit 2, one line per problem, no traceback ------------------------------


def _usage_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_unknown_model(capsys) -> None:
    code, out, err = validate(capsys, VALID, model="nova-9000")
    _usage_error(code, out, err, "--model", "unknown model 'nova-9000'", "lite-2")


@pytest.mark.parametrize("rule", ["no-such-rule", "schema", "role-order"])
def test_allow_needs_a_relaxable_rule(capsys, rule: str) -> None:
    code, out, err = validate(capsys, VALID, "--allow", rule)
    _usage_error(code, out, err, "--allow", f"{rule!r} cannot be relaxed", RELAXABLE[0])


@pytest.mark.parametrize(("fmt", "model"), [("dpo", "lite-2"), ("rft", "micro")])
def test_format_the_model_does_not_take(capsys, fmt: str, model: str) -> None:
    code, out, err = run(capsys, "data", "validate", VALID, "--format", fmt, "--model", model)
    _usage_error(code, out, err, "--format")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_missing_file(capsys, tmp_path: Path, workers: str) -> None:
    missing = str(tmp_path / "nope.jsonl")
    code, out, err = validate(capsys, missing, "--workers", workers)
    _usage_error(code, out, err, missing, "file not found")


def test_missing_s3_object(capsys, s3_server: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="cli-datasets")
    code, out, err = validate(capsys, "s3://cli-datasets/train/missing.jsonl")
    _usage_error(code, out, err, "s3://cli-datasets/train/missing.jsonl", "object not found")


def test_s3_object(capsys, s3_server: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="cli-datasets-ok")
    client.put_object(Bucket="cli-datasets-ok", Key="train.jsonl", Body=Path(INVALID).read_bytes())
    code, out, _ = validate(capsys, "s3://cli-datasets-ok/train.jsonl", "--json")
    assert code == 1
    _, local, _ = validate(capsys, INVALID, "--json")
    exclude = {"seconds", "uri"}
    assert as_report(out).to_dict(exclude=exclude) == as_report(local).to_dict(exclude=exclude)


@pytest.mark.parametrize("flag", ["--max-errors", "--workers"])
def test_negative_numbers(capsys, flag: str) -> None:
    code, out, err = validate(capsys, VALID, flag, "-1")
    _usage_error(code, out, err, flag, "negative")


def test_several_problems_are_all_listed(capsys) -> None:
    code, out, err = validate(capsys, VALID, "--allow", "schema", "--max-errors", "-2", model="x")
    _usage_error(code, out, err, "--model", "--allow", "--max-errors")
    assert len(err.strip().splitlines()) == 3


def test_validate_starts_without_heavy_imports() -> None:
    """Every round starts with this command: it loads neither pydantic (tens of milliseconds a
    run) nor anything of Airflow, boto3 or the training stack for a local file."""
    import subprocess
    import sys

    heavy = ["pydantic", "airflow", "boto3", "botocore", "mlflow", "torch", "yaml"]
    script = (
        "import sys; from tuneloop.cli.main import main; code = main(sys.argv[1:]); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(code)"
    )
    args = ["data", "validate", VALID, "--format", "sft", "--model", "lite"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_argparse_rejects_a_bad_platform(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        validate(capsys, VALID, "--platform", "azure")
    assert exit_.value.code == 2


# --- data rules ------------------------------------------------------------------------------


def test_rules_lists_every_rule(capsys) -> None:
    code, out, err = run(capsys, "data", "rules")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(RULES)
    for rule in RULES.values():
        line = next(line for line in lines if line.startswith(f"{rule.id}: "))
        assert rule.summary in line
        assert line.endswith(f"(relax with --allow {rule.id})") == rule.relaxable
    listed = {line.split(":")[0] for line in lines}
    assert {"invalid-json", "role-order", "reserved-token", "sample-count"} <= listed
