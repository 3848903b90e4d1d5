"""Campaign files: loading, round planning, and every preflight a campaign adds to its recipes."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import yaml

from tuneloop.config.file import load_campaign
from tuneloop.config.templating import sample_template_context
from tuneloop.errors import CampaignError
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.rounds.plan import plan_round, validate_campaign

REPO = Path(__file__).resolve().parents[2]
CAMPAIGNS = REPO / "recipes" / "campaigns"
EXAMPLE = CAMPAIGNS / "examples" / "support-bot-hyperpod.yaml"


def all_campaign_files() -> list[Path]:
    return sorted(CAMPAIGNS.rglob("*.yaml"))


@pytest.mark.parametrize("path", all_campaign_files(), ids=lambda p: p.name)
def test_shipped_campaigns_plan_cleanly(path: Path) -> None:
    plan = plan_round(load_campaign(path))
    assert plan.stages
    assert plan.evaluation.metrics


def write_campaign(tmp_path: Path, edit=None, text: str | None = None) -> Path:
    """A copy of the HyperPod example (optionally edited) placed where its recipes resolve."""
    data = yaml.safe_load(EXAMPLE.read_text())
    if edit is not None:
        edit(data)
    path = tmp_path / "campaign.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return path


def problems_of(path: Path, **kwargs) -> list:
    with pytest.raises(CampaignError) as info:
        plan_round(load_campaign(path), **kwargs)
    return info.value.problems


def test_plan_injects_round_values_into_each_recipe() -> None:
    plan = plan_round(
        load_campaign(EXAMPLE), template_context=sample_template_context(date(2026, 11, 23))
    )
    sft, rft = plan.stages
    assert (sft.method, sft.technique, rft.method) == (Method.SFT, Technique.LORA, Method.RFT)
    assert plan.platform is Platform.HYPERPOD
    run = sft.recipe["run"]
    assert run["name"] == sft.job_name == "support-bot-r0001-sft"
    assert run["data_s3_path"] == "s3://acme-ml-data/support/2026-11-23/sft-train.jsonl"
    assert run["model_name_or_path"] == "nova-lite-2/prod"
    assert run["output_s3_path"] == "s3://acme-ml-artifacts/tuneloop/support-bot/rounds/0001/"
    assert run["replicas"] == 4
    assert sft.recipe["training_config"]["max_steps"] == 400
    # save_steps follows max_steps through the template's interpolation.
    assert sft.recipe["training_config"]["save_steps"] == 400
    # RFT starts from the SFT checkpoint of the same round; evaluation from the RFT one.
    assert rft.recipe["run"]["model_name_or_path"] == "@checkpoint:sft"
    assert rft.recipe["training_config"]["trainer"]["max_steps"] == 100
    assert rft.recipe["training_config"]["rollout"]["rewards"]["api_endpoint"]["lambda_arn"] == (
        "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-support-reward"
    )
    assert plan.evaluation.model_name_or_path == "@checkpoint:rft"
    assert plan.evaluation.metrics == ["exact_match", "f1_score", "rougeL"]
    # The plan round-trips through JSON, so it can travel in XCom and into the ledger.
    assert type(plan).model_validate(json.loads(plan.model_dump_json())) == plan


def test_later_round_numbers_and_base() -> None:
    plan = plan_round(
        load_campaign(EXAMPLE),
        round_number=3,
        base_uri="s3://customer-escrow-1-hp-x/support-bot-r0002-rft/step9",
    )
    assert plan.stages[0].job_name == "support-bot-r0003-sft"
    assert plan.stages[0].recipe["run"]["model_name_or_path"].startswith("s3://customer-escrow")


def test_data_uris_are_rendered_per_logical_date() -> None:
    cf = load_campaign(EXAMPLE)
    monday = plan_round(cf, template_context=sample_template_context(date(2026, 11, 2)))
    later = plan_round(cf, template_context=sample_template_context(date(2026, 11, 9)))
    assert "/2026-11-02/" in monday.stages[0].datasets["train"]
    assert "/2026-11-09/" in later.stages[0].datasets["train"]


def test_undefined_template_variable_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path,
        lambda d: d["stages"][0]["datasets"].update(
            train="s3://acme-ml-data/{{ dss }}/train.jsonl"
        ),
    )
    [problem] = problems_of(path)
    assert problem.path == "stages[0].datasets.train"
    assert "'dss' is undefined" in problem.message and "ds_nodash" in problem.message
    assert problem.line == _line_of(path, "train: s3://acme-ml-data/{{ dss }}")


def _line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_recipe_technique_must_match_campaign_technique(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, lambda d: d["stages"][0].update(recipe="nova/nova-2-lite/sft-full.yaml")
    )
    [problem] = problems_of(path)
    assert problem.path == "stages[0].recipe"
    assert "Incompatible model training technique detected" in problem.message
    assert problem.fix


def test_rft_before_sft_breaks_the_lineage(tmp_path: Path) -> None:
    def swap(d):
        d["stages"].reverse()

    problems = problems_of(write_campaign(tmp_path, swap))
    [problem] = [p for p in problems if "Incompatible" in p.message]
    assert problem.path == "stages[1]"
    assert "began with RFT" in problem.message


def test_cpt_stage_in_a_lora_campaign_is_refused(tmp_path: Path) -> None:
    def add_cpt(d):
        d["stages"].insert(
            0,
            {
                "method": "cpt",
                "recipe": "nova/nova-2-lite/cpt.yaml",
                "datasets": {"train": "s3://acme-ml-data/cpt.jsonl"},
            },
        )

    problems = problems_of(write_campaign(tmp_path, add_cpt))
    assert any("Incompatible model training technique detected" in p.message for p in problems)


def test_template_for_another_model_is_refused(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, lambda d: d["stages"][0].update(recipe="nova/nova-lite/sft-lora.yaml")
    )
    [problem] = problems_of(path)
    assert "amazon.nova-lite-v1:0:300k" in problem.message
    assert "amazon.nova-2-lite-v1:0:256k" in problem.message


def test_hyperpod_reward_function_name_must_contain_sagemaker(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path,
        lambda d: d["stages"][1].update(
            reward_function="arn:aws:lambda:us-east-1:123456789012:function:support-reward"
        ),
    )
    [problem] = problems_of(path)
    assert problem.path == "stages[1].reward_function"
    assert "must contain 'SageMaker'" in problem.message
    assert "SageMaker-support-reward" in problem.fix


def test_rft_stage_without_reward_function(tmp_path: Path) -> None:
    problems = problems_of(
        write_campaign(tmp_path, lambda d: d["stages"][1].pop("reward_function"))
    )
    assert any(p.path == "stages[1].method" and "reward_function" in p.message for p in problems)


def test_escrow_bucket_as_training_data_is_refused(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path,
        lambda d: d["stages"][0]["datasets"].update(
            train="s3://customer-escrow-123456789012-hp-abc/data.jsonl"
        ),
    )
    [problem] = problems_of(path)
    assert problem.path == "stages[0].datasets.train"
    assert "customer-owned bucket" in problem.message


def test_stage_override_errors_point_at_the_override(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, lambda d: d["stages"][0]["overrides"].update({"run.replicas": 3})
    )
    [problem] = problems_of(path)
    assert problem.path == "stages[0].overrides.run.replicas"
    assert problem.allowed == "1, 4, 8, 16, 32"
    assert problem.line == _line_of(path, "run.replicas: 3")


def test_gate_metric_must_be_reported_by_the_evaluation(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d["gate"].update(primary_metric="accuracy"))
    problems = problems_of(path)
    assert any(
        p.path == "gate.primary_metric" and "does not report 'accuracy'" in p.message
        for p in problems
    )


def test_duplicate_stage_names(tmp_path: Path) -> None:
    def dup(d):
        d["stages"].append(dict(d["stages"][1]))

    problems = problems_of(write_campaign(tmp_path, dup))
    assert any("already used" in p.message for p in problems)


def test_unknown_campaign_key_is_a_located_error(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d["gate"].update(max_round=3))
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    [problem] = info.value.problems
    assert problem.path == "gate.max_round"
    assert "did you mean 'max_rounds'" in problem.message


def test_backend_fields_are_checked(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, lambda d: d["backend"].update(output_root="/local/path", type="smtj")
    )
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    problems = {p.path: p for p in info.value.problems}
    assert problems["backend.output_root"].message == (
        "'/local/path' is not an s3:// folder in a bucket you own"
    )
    assert problems["backend.role_arn"].message == "required field is missing"


def test_bad_schedule(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d.update(schedule="every monday"))
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    assert "cron" in info.value.problems[0].message


def test_s3_base_checkpoint_must_carry_a_manifest(tmp_path: Path, s3_server) -> None:
    """Online preflight reads the base's manifest.json from S3 (a moto server over HTTP)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="acme-ml-artifacts")
    base = "s3://acme-ml-artifacts/outputs/support-bot-old-sft"
    path = write_campaign(tmp_path, lambda d: d.update(base_model=base))

    [problem] = problems_of(path, offline=False)
    assert problem.path == "base_model"
    assert "Model config not found" in problem.message
    assert f"{base}/manifest.json" in problem.message

    checkpoint = "s3://customer-escrow-123456789012-hp-abc/support-bot-old-sft/step100"
    s3.put_object(
        Bucket="acme-ml-artifacts",
        Key="outputs/support-bot-old-sft/manifest.json",
        Body=json.dumps({"checkpoint_s3_bucket": checkpoint}),
    )
    plan = plan_round(load_campaign(path), offline=False)
    assert plan.base_model == checkpoint
    assert plan.stages[0].recipe["run"]["model_name_or_path"] == checkpoint


def test_declared_base_checkpoint_is_read_and_checked(tmp_path: Path) -> None:
    job = tmp_path / "old-job"
    job.mkdir()
    (tmp_path / "local").symlink_to(REPO / "recipes" / "local")
    data = yaml.safe_load((CAMPAIGNS / "demo.yaml").read_text())
    data["base_model"] = {"output_uri": str(job), "technique": "full", "trained_with": ["rft"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))

    problems = problems_of(path, offline=False)
    assert problems[0].path == "base_model"
    assert "Model config not found" in problems[0].message

    (job / "manifest.json").write_text(json.dumps({"checkpoint_s3_bucket": str(job / "ckpt")}))
    problems = problems_of(path, offline=False)
    # The base began with RFT, so the campaign's SFT stage may not follow it.
    assert any("began with RFT" in p.message for p in problems)

    data["base_model"]["trained_with"] = ["sft"]
    path.write_text(yaml.safe_dump(data))
    plan = plan_round(load_campaign(path), offline=False)
    assert plan.base_model == str(job / "ckpt")


def test_local_base_model_directory_must_exist(tmp_path: Path) -> None:
    (tmp_path / "local").symlink_to(REPO / "recipes" / "local")
    data = yaml.safe_load((CAMPAIGNS / "demo.yaml").read_text())
    data["base_model"] = str(tmp_path / "no-such-model")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    [problem] = problems_of(path, offline=False)
    assert problem.path == "base_model"
    assert "Model config not found" in problem.message
    (tmp_path / "no-such-model").mkdir()
    assert plan_round(load_campaign(path), offline=False).base_model == data["base_model"]


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    def break_things(d):
        d["stages"][0]["datasets"]["train"] = "s3://customer-escrow-1-hp-x/train.jsonl"
        d["stages"][1]["reward_function"] = "arn:aws:lambda:us-east-1:123456789012:function:r"
        d["evaluation"]["dataset"] = "not-a-uri"
        d["gate"]["primary_metric"] = "accuracy"

    path = write_campaign(tmp_path, break_things)
    problems = problems_of(path)
    assert [p.path for p in problems] == [
        "stages[0].datasets.train",
        "stages[1].reward_function",
        "evaluation.dataset",
        "gate.primary_metric",
    ]
    assert [p.line for p in problems] == sorted(p.line for p in problems)


def _dig(data: dict, *keys: str):
    for key in keys:
        data = data[key]
    return data


def test_rollback_round_halves_every_learning_rate_and_applies_overrides(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path,
        lambda d: d["gate"].update(
            rollback={"overrides": {"sft": {"training_config": {"max_steps": 150}}}}
        ),
    )
    cf = load_campaign(path)
    normal, after = plan_round(cf), plan_round(cf, rollback=True)
    sft_lr = ("training_config", "optim_config", "lr")
    rft_lr = ("training_config", "trainer", "optim_config", "lr")
    assert _dig(after.stages[0].recipe, *sft_lr) == pytest.approx(
        _dig(normal.stages[0].recipe, *sft_lr) / 2
    )
    assert _dig(after.stages[1].recipe, *rft_lr) == pytest.approx(3.5e-7)
    assert after.stages[0].recipe["training_config"]["max_steps"] == 150
    assert normal.stages[0].recipe["training_config"]["max_steps"] == 400


def test_rollback_that_would_leave_the_allowed_range_is_caught_up_front(tmp_path: Path) -> None:
    data = yaml.safe_load((CAMPAIGNS / "examples" / "claims-smtj.yaml").read_text())
    data["stages"][0]["overrides"]["training_config.model.optim.lr"] = 1.5e-6
    data["stages"][0]["overrides"]["training_config.model.optim.sched.min_lr"] = 1e-7
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "nova").symlink_to(REPO / "recipes" / "nova")
    cf = load_campaign(path)
    plan_round(cf)  # the normal round is fine
    with pytest.raises(CampaignError) as info:
        validate_campaign(cf)
    [problem] = info.value.problems
    assert problem.path == "gate.rollback.lr_scale"
    assert problem.message.startswith("in the round after a rollback: 7.5e-07 is out of range")
    assert problem.allowed == "1e-06..0.001"


def test_rollback_overrides_must_name_a_stage(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, lambda d: d["gate"].update(rollback={"overrides": {"stf": {"run.replicas": 8}}})
    )
    problems = problems_of(path)
    assert problems[0].path == "gate.rollback.overrides.stf"
    assert problems[0].allowed == "sft, rft"


def test_rft_needs_a_region_where_its_images_are_published(tmp_path: Path) -> None:
    # The HyperPod example: the launcher deploys RFT in us-east-1, ap-northeast-1, eu-central-1
    # and eu-west-2, not us-west-2.
    path = write_campaign(tmp_path, lambda d: d["backend"].update(region="us-west-2"))
    [problem] = problems_of(path)
    assert problem.path == "backend.region"
    assert "Nova RFT recipes are not supported for region 'us-west-2'" in problem.message


def test_unknown_region(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d["backend"].update(region="ap-south-1"))
    [problem] = problems_of(path)
    assert "not supported for region 'ap-south-1'" in problem.message


def test_instance_type_problems_point_at_the_backend(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d["backend"].update(instance_type="ml.p4d.24xlarge"))
    problems = problems_of(path)
    # Nova 2 Lite SFT runs on p4d, RFT does not.
    assert [p.path for p in problems] == ["backend.instance_type"]
    assert problems[0].allowed == "ml.p5.48xlarge, ml.p5en.48xlarge"
    assert problems[0].line == _line_of(path, "instance_type: ml.p4d.24xlarge")


def test_base_job_output_with_checkpoint_record_is_checked(tmp_path: Path) -> None:
    """An earlier tuneloop job's output carries checkpoint.json; its lineage decides."""
    job = tmp_path / "demo-r0003-rft"
    job.mkdir()
    (job / "manifest.json").write_text(json.dumps({"checkpoint_s3_bucket": str(job / "ckpt")}))
    record = {
        "model_type": "local.tiny-chat-v1",
        "technique": "lora",
        "platform": "local",
        "lineage": ["sft", "rft"],
    }
    (job / "checkpoint.json").write_text(json.dumps(record))
    (tmp_path / "local").symlink_to(REPO / "recipes" / "local")
    data = yaml.safe_load((CAMPAIGNS / "demo.yaml").read_text())
    data["base_model"] = str(job)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))

    [problem] = problems_of(path, offline=False)
    assert problem.path == "stages[0]"
    assert "Incompatible model training technique detected" in problem.message
    assert "LoRA" in problem.message and "full-rank" in problem.message

    record["technique"] = "full"
    (job / "checkpoint.json").write_text(json.dumps(record))
    plan = plan_round(load_campaign(path), offline=False)
    assert plan.stages[0].model_name_or_path == str(job / "ckpt")


def test_escrow_checkpoint_uri_as_base_model_explains_what_to_use(tmp_path: Path) -> None:
    base = "s3://customer-escrow-123456789012-hp-abc/support-bot-old-sft/step100"
    [problem] = problems_of(write_campaign(tmp_path, lambda d: d.update(base_model=base)))
    assert problem.path == "base_model"
    assert "output folder" in problem.message and "manifest.json" in problem.message


def test_offline_plan_names_the_base_manifest_instead_of_guessing(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d.update(base_model="s3://acme-ml-artifacts/job"))
    plan = plan_round(load_campaign(path), offline=True)
    assert plan.stages[0].model_name_or_path == "@checkpoint:base"


def test_unreachable_storage_is_a_located_problem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELOOP_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    path = write_campaign(tmp_path, lambda d: d.update(base_model="s3://acme-ml-artifacts/job"))
    [problem] = problems_of(path, offline=False)
    assert problem.path == "base_model"
    assert problem.message.startswith("cannot read s3://acme-ml-artifacts/job/manifest.json")
    assert "--offline" in problem.fix


def test_trigger_on_data_needs_uris(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, lambda d: d.update(trigger_on_data=["acme-ml-data/new"]))
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    [problem] = info.value.problems
    assert problem.path == "trigger_on_data"
    assert "is not a URI" in problem.message


def test_datasets_may_relax_only_relaxable_rules(tmp_path: Path) -> None:
    path = write_campaign(
        tmp_path, lambda d: d["stages"][0]["datasets"].update(allow=["blank-line", "role-order"])
    )
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    [problem] = info.value.problems
    assert problem.path == "stages[0].datasets.allow"
    assert "cannot relax 'role-order'" in problem.message and "blank-line" in problem.message
    path = write_campaign(
        tmp_path, lambda d: d["stages"][0]["datasets"].update(allow=["blank-line"])
    )
    assert load_campaign(path).campaign.stages[0].datasets.allow == ["blank-line"]


# --- metrics the round adds: format compliance and perplexity ----------------------------------


def write_demo(tmp_path: Path, edit) -> Path:
    """A copy of the local demo campaign (edited), placed where its recipes resolve."""
    (tmp_path / "local").symlink_to(REPO / "recipes" / "local")
    data = yaml.safe_load((CAMPAIGNS / "demo.yaml").read_text())
    edit(data)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_format_compliance_needs_an_output_format(tmp_path: Path) -> None:
    def target(d):
        d["gate"]["targets"]["format_compliance"] = 0.98
        d["evaluation"]["metrics"].append("format_compliance")

    path = write_campaign(tmp_path, target)
    problems = problems_of(path)
    assert [p.path for p in problems] == ["evaluation.metrics[3]", "gate.targets.format_compliance"]
    line = _line_of(path, "format_compliance: 0.98")
    assert problems[1].format() == (
        f"{path}:{line}: gate.targets.format_compliance: 'format_compliance' is measured only "
        "when the campaign declares an output format; fix: set evaluation.output_format (json, "
        "or {regex: <pattern>})"
    )

    def with_format(fmt):
        def edit(d):
            target(d)
            d["evaluation"]["output_format"] = fmt

        return edit

    for fmt in ("json", {"regex": r"ANSWER: \d+"}):
        plan = plan_round(load_campaign(write_campaign(tmp_path, with_format(fmt))))
        assert plan.evaluation.metrics == ["exact_match", "f1_score", "rougeL", "format_compliance"]


def test_output_format_needs_an_evaluation_that_writes_answers(tmp_path: Path) -> None:
    def benchmark(d):
        d["evaluation"] = {
            "recipe": "nova/nova-2-lite/eval-benchmark.yaml",
            "metrics": ["accuracy"],
            "output_format": "json",
        }
        d["gate"].update(primary_metric="accuracy", targets={"accuracy": 0.8})

    path = write_campaign(tmp_path, benchmark)
    [problem] = problems_of(path)
    assert problem.path == "evaluation.output_format"
    assert problem.line == _line_of(path, "output_format: json")
    assert problem.message.endswith("writes no answers whose format could be checked")
    assert problem.allowed == "an evaluation recipe whose task is gen_qa"
    assert problem.fix == "evaluate with such a recipe, or remove evaluation.output_format"


def test_perplexity_is_measured_by_the_local_backend_only(tmp_path: Path) -> None:
    def perplexity(d):
        d["evaluation"]["perplexity_dataset"] = "s3://acme-ml-data/support/domain.jsonl"
        d["gate"]["targets"]["perplexity"] = {"at_most": 8.0}

    path = write_campaign(tmp_path, perplexity)
    problems = {p.path: p for p in problems_of(path)}
    assert set(problems) == {"evaluation.perplexity_dataset", "gate.targets.perplexity"}
    dataset = problems["evaluation.perplexity_dataset"]
    assert dataset.format() == (
        f"{path}:{_line_of(path, 'perplexity_dataset:')}: evaluation.perplexity_dataset: "
        "perplexity is measured by the local backend only, not hyperpod; fix: remove "
        "evaluation.perplexity_dataset, or run the campaign on the local backend"
    )
    assert problems["gate.targets.perplexity"].message == (
        "'perplexity' is measured by the local backend only, not hyperpod"
    )


def test_a_local_campaign_may_gate_on_perplexity(tmp_path: Path) -> None:
    def perplexity(d):
        d["evaluation"]["perplexity_dataset"] = ".tuneloop/demo/data/domain.jsonl"
        d["evaluation"]["metrics"].append("perplexity")
        d["gate"]["targets"]["perplexity"] = {"at_most": 3.0}

    plan = plan_round(load_campaign(write_demo(tmp_path, perplexity)))
    assert plan.evaluation.metrics == ["exact_match", "f1_score", "rougeL", "perplexity"]


def test_perplexity_is_lower_is_better(tmp_path: Path) -> None:
    def wrong_way(d):
        d["evaluation"]["perplexity_dataset"] = ".tuneloop/demo/data/domain.jsonl"
        d["evaluation"]["metrics"] = ["perplexity", "exact_match"]
        d["gate"].update(primary_metric="perplexity", targets={"perplexity": 3.0})

    path = write_demo(tmp_path, wrong_way)
    problems = {p.path: p for p in problems_of(path)}
    assert set(problems) == {"gate.higher_is_better", "gate.targets.perplexity"}
    assert problems["gate.higher_is_better"].fix == "set gate.higher_is_better: false"
    assert problems["gate.targets.perplexity"].fix == "write perplexity: {at_most: <value>}"


def test_perplexity_needs_a_domain_text_set(tmp_path: Path) -> None:
    path = write_demo(tmp_path, lambda d: d["gate"]["targets"].update(perplexity={"at_most": 3}))
    [problem] = problems_of(path)
    assert problem.path == "gate.targets.perplexity"
    assert problem.message == "'perplexity' is measured only on a domain text set"
    assert problem.fix == (
        'set evaluation.perplexity_dataset to a JSONL file of {"text": ...} records'
    )
