"""Which stage may start from which checkpoint: technique, lineage, model type and platform."""

from __future__ import annotations

import pytest

from tuneloop.errors import (
    CompatibilityError,
    ConfigError,
    DataLocationError,
    IncompatibleTechniqueError,
    ModelTypeMismatchError,
    PlatformMismatchError,
    RewardFunctionError,
)
from tuneloop.recipes import compat
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.recipes.compat import Checkpoint

CPT, SFT, RFT = Method.CPT, Method.SFT, Method.RFT
FULL, LORA = Technique.FULL, Technique.LORA
HP, SMTJ, LOCAL = Platform.HYPERPOD, Platform.SMTJ, Platform.LOCAL

NOVA2_LITE = "amazon.nova-2-lite-v1:0:256k"
NOVA1_LITE = "amazon.nova-lite-v1:0:300k"
URI = "s3://customer-escrow-123456789012-hp-abc123/round-1/step100"


def checkpoint(
    origin: Method | None,
    technique: Technique,
    *,
    model_type: str = NOVA2_LITE,
    platform: Platform = HP,
    lineage: tuple[Method, ...] | None = None,
) -> Checkpoint:
    if lineage is None:
        lineage = (origin,) if origin is not None else ()
    return Checkpoint(
        uri=URI, model_type=model_type, technique=technique, platform=platform, lineage=lineage
    )


# --- the technique matrix --------------------------------------------------------------------

MATRIX = [
    # (lineage began with, its technique, next method, next technique, allowed)
    (SFT, FULL, SFT, FULL, True),
    (SFT, FULL, RFT, FULL, True),
    (SFT, FULL, SFT, LORA, False),
    (SFT, FULL, RFT, LORA, False),
    (SFT, FULL, CPT, FULL, False),
    (SFT, LORA, SFT, LORA, True),
    (SFT, LORA, RFT, LORA, True),
    (SFT, LORA, SFT, FULL, False),
    (SFT, LORA, RFT, FULL, False),
    (SFT, LORA, CPT, FULL, False),
    (RFT, FULL, RFT, FULL, True),
    (RFT, FULL, SFT, FULL, False),
    (RFT, FULL, SFT, LORA, False),
    (RFT, FULL, RFT, LORA, False),
    (RFT, LORA, RFT, LORA, True),
    (RFT, LORA, SFT, LORA, False),
    (RFT, LORA, SFT, FULL, False),
    (RFT, LORA, RFT, FULL, False),
    (CPT, FULL, CPT, FULL, True),
    (CPT, FULL, SFT, FULL, True),
    (CPT, FULL, RFT, FULL, True),
    (CPT, FULL, SFT, LORA, False),
    (CPT, FULL, RFT, LORA, False),
]


def _id(case: tuple) -> str:
    origin, base_tech, method, tech, ok = case
    return f"{origin.value}-{base_tech.value}->{method.value}-{tech.value}-{'ok' if ok else 'no'}"


@pytest.mark.parametrize("case", MATRIX, ids=[_id(c) for c in MATRIX])
def test_technique_matrix(case):
    origin, base_technique, method, technique, ok = case
    base = checkpoint(origin, base_technique)
    if ok:
        compat.check_technique(base, method, technique)
        compat.check_continuation(
            base, method=method, technique=technique, model_type=NOVA2_LITE, platform=HP
        )
        return
    with pytest.raises(IncompatibleTechniqueError) as info:
        compat.check_technique(base, method, technique, path="stages[1].technique")
    [problem] = info.value.problems
    assert problem.path == "stages[1].technique"
    assert problem.message.startswith("Incompatible model training technique detected: ")
    assert problem.fix
    assert str(info.value).startswith("<input>: stages[1].technique: Incompatible model")


def test_cpt_stage_is_full_rank_whatever_technique_is_asked():
    # CPT trains every weight, so a lineage's technique setting does not apply to it.
    compat.check_technique(checkpoint(CPT, FULL), CPT, LORA)
    assert compat.method_technique(CPT, LORA) is FULL
    assert compat.method_technique(SFT, LORA) is LORA


def test_lora_after_full_rank_names_both_techniques():
    with pytest.raises(IncompatibleTechniqueError) as info:
        compat.check_technique(checkpoint(SFT, FULL), SFT, LORA)
    message = info.value.problems[0].message
    assert "SFT (full-rank)" in message and "SFT (LoRA)" in message
    assert URI in message
    assert "technique: full" in info.value.problems[0].fix


def test_method_not_allowed_after_origin_names_allowed_methods():
    with pytest.raises(IncompatibleTechniqueError) as info:
        compat.check_technique(checkpoint(RFT, FULL), SFT, FULL)
    message = info.value.problems[0].message
    assert "began with RFT (full-rank)" in message
    assert "may continue only with RFT (full-rank)" in message


def test_checkpoint_without_lineage_checks_technique_only():
    base = checkpoint(None, LORA)
    assert base.origin is None
    compat.check_technique(base, RFT, LORA)
    compat.check_technique(base, SFT, LORA)
    with pytest.raises(IncompatibleTechniqueError):
        compat.check_technique(base, SFT, FULL)


def test_origin_is_first_method_of_lineage():
    base = checkpoint(SFT, FULL, lineage=(SFT, RFT))
    assert base.origin is SFT
    compat.check_technique(base, SFT, FULL)


def test_allowed_after_table():
    assert {
        SFT: frozenset({SFT, RFT}),
        RFT: frozenset({RFT}),
        CPT: frozenset({CPT, SFT, RFT}),
    } == compat.ALLOWED_AFTER


# --- model type and platform -----------------------------------------------------------------


def test_model_type_mismatch():
    base = checkpoint(SFT, FULL, model_type=NOVA2_LITE)
    with pytest.raises(ModelTypeMismatchError) as info:
        compat.check_continuation(
            base, method=SFT, technique=FULL, model_type=NOVA1_LITE, platform=HP, path="stages[0]"
        )
    [problem] = info.value.problems
    assert "does not match model_type" in problem.message
    assert NOVA2_LITE in problem.message and NOVA1_LITE in problem.message
    assert problem.path == "stages[0].model_type"
    assert NOVA2_LITE in problem.fix


@pytest.mark.parametrize("trained,target", [(HP, SMTJ), (SMTJ, HP), (HP, LOCAL)])
def test_platform_mismatch(trained, target):
    base = checkpoint(SFT, FULL, platform=trained)
    with pytest.raises(PlatformMismatchError) as info:
        compat.check_continuation(
            base, method=SFT, technique=FULL, model_type=NOVA2_LITE, platform=target
        )
    [problem] = info.value.problems
    assert problem.message.startswith("Platform mismatch: ")
    assert f"trained on {trained.value}" in problem.message
    assert target.value in problem.message
    assert problem.path == "platform"
    assert f"run this stage on {trained.value}" in problem.fix


def test_continuation_from_base_model_always_passes():
    compat.check_continuation(
        None, method=RFT, technique=LORA, model_type=NOVA2_LITE, platform=SMTJ
    )


def test_continuation_checks_model_type_before_technique():
    base = checkpoint(SFT, LORA, model_type=NOVA1_LITE)
    with pytest.raises(ModelTypeMismatchError):
        compat.check_continuation(
            base, method=SFT, technique=FULL, model_type=NOVA2_LITE, platform=HP
        )


def test_errors_are_config_errors_with_fix():
    for error_type in (
        IncompatibleTechniqueError,
        ModelTypeMismatchError,
        PlatformMismatchError,
        DataLocationError,
        RewardFunctionError,
    ):
        assert issubclass(error_type, CompatibilityError)
        assert issubclass(error_type, ConfigError)
        error = error_type("a.b", "detail", "do this")
        assert error.problems[0].fix == "do this"
        assert error.problems[0].message == f"{error_type.service_message}: detail"
        assert error.problems[0].format().endswith("; fix: do this")


# --- lineages --------------------------------------------------------------------------------


def lineage(methods, technique=FULL, **kwargs):
    compat.check_lineage(methods, technique=technique, model_type=NOVA2_LITE, platform=HP, **kwargs)


@pytest.mark.parametrize(
    "methods,technique",
    [
        ([SFT], FULL),
        ([SFT], LORA),
        ([RFT], LORA),
        ([SFT, RFT], FULL),
        ([SFT, RFT], LORA),
        ([SFT, SFT, RFT], FULL),
        ([CPT], FULL),
        ([CPT, SFT], FULL),
        ([CPT, SFT, RFT], FULL),
        ([CPT, RFT], FULL),
        ([], FULL),
    ],
)
def test_valid_lineages(methods, technique):
    lineage(methods, technique)


def test_rft_then_sft_fails():
    with pytest.raises(IncompatibleTechniqueError) as info:
        lineage([RFT, SFT])
    assert info.value.problems[0].path == "stages[1].technique"


def test_sft_then_rft_passes_for_a_second_round_too():
    # The second round starts SFT again from the RFT checkpoint of round one.
    lineage([SFT, RFT])
    base = checkpoint(SFT, FULL, lineage=(SFT, RFT))
    lineage([SFT, RFT], base=base)


def test_rounds_repeat_from_an_rft_lora_checkpoint():
    lineage([RFT], LORA, base=checkpoint(RFT, LORA))
    lineage([RFT, RFT], LORA)
    with pytest.raises(IncompatibleTechniqueError):
        lineage([SFT, RFT], LORA, base=checkpoint(RFT, LORA))


def test_cpt_in_lora_lineage_fails():
    with pytest.raises(IncompatibleTechniqueError) as info:
        lineage([CPT, SFT, RFT], LORA)
    assert info.value.problems[0].path == "stages[1].technique"


def test_lineage_paths_name_the_stage():
    with pytest.raises(IncompatibleTechniqueError) as info:
        lineage([RFT, SFT], paths=["stages.grpo", "stages.sft"])
    assert info.value.problems[0].path == "stages.sft.technique"


def test_lineage_from_existing_checkpoint():
    lineage([SFT], base=checkpoint(CPT, FULL))
    with pytest.raises(IncompatibleTechniqueError):
        lineage([SFT], base=checkpoint(RFT, FULL))
    with pytest.raises(ModelTypeMismatchError):
        lineage([SFT], base=checkpoint(SFT, FULL, model_type=NOVA1_LITE))
    with pytest.raises(PlatformMismatchError):
        lineage([SFT], base=checkpoint(SFT, FULL, platform=SMTJ))


def test_after_stage_records_lineage():
    base = checkpoint(CPT, FULL)
    after = compat.after_stage(base, SFT, LORA, "s3://next")
    assert after.uri == "s3://next"
    assert after.lineage == (CPT, SFT)
    assert after.technique is LORA
    assert base.lineage == (CPT,)


# --- data and reward function ----------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://customer-escrow-123456789012-hp-abc/data.jsonl",
        "s3://customer-escrow-123456789012-smtj-abc/data.jsonl",
        "  S3://Customer-Escrow-1/x.jsonl",
    ],
)
def test_escrow_data_location_fails(uri):
    with pytest.raises(DataLocationError) as info:
        compat.check_data_location(uri, path="data_s3_path")
    [problem] = info.value.problems
    assert "customer-owned bucket" in problem.message
    assert problem.path == "data_s3_path"
    assert problem.fix


def test_customer_bucket_passes():
    compat.check_data_location("s3://my-bucket/customer-escrow-copy/data.jsonl", path="x")


def test_reward_function_rules():
    good = "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward"
    plain = "arn:aws:lambda:us-east-1:123456789012:function:reward"
    compat.check_reward_function(good, HP, path="r")
    compat.check_reward_function(good + ":live", HP, path="r")
    compat.check_reward_function(plain, SMTJ, path="r")
    with pytest.raises(RewardFunctionError, match="must contain 'SageMaker'"):
        compat.check_reward_function(plain, HP, path="r")
    with pytest.raises(RewardFunctionError, match="is not a Lambda function ARN"):
        compat.check_reward_function("reward", SMTJ, path="r")
    assert compat.lambda_function_name(good) == "SageMaker-reward"
    assert compat.lambda_function_name("arn:aws:s3:::bucket") is None


def test_local_reward_function_is_a_python_reference():
    compat.check_reward_function("tuneloop.local.demo_task:reward", LOCAL, path="r")
    with pytest.raises(RewardFunctionError, match="not a Python callable reference"):
        compat.check_reward_function("arn:aws:lambda:us-east-1:1:function:x", LOCAL, path="r")
