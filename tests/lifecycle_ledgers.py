"""Ledgers, campaigns and stage folders for the lifecycle tests.

Rules:
- Records have the shape the round DAG writes (`RoundRecord`, `StageRecord`, `Decision`,
  `RoundClaim` from `tuneloop.rounds`); the campaign is "demo" unless a builder says otherwise.
- A round's stage folder is ``<root>/rounds/<NNNN>/demo-r<NNNN>-<stage>``, the layout the
  backends write; a stage's job name is its folder's name.
- Campaigns are real: `Campaign.model_validate` for a model, `parse_campaign` of a written file
  for a `CampaignFile`; trees are written to real folders (``tmp_path``) or to moto's S3.
- Importing this module does nothing: no fixtures, no I/O, boto3 imported inside functions.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneloop import storage
from tuneloop.artifacts.manifest import Checkpoint
from tuneloop.config.campaign import Campaign
from tuneloop.config.file import CampaignFile, parse_campaign
from tuneloop.lifecycle.local_archive import archive_location
from tuneloop.lifecycle.store import LifecycleStore
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.rounds.decision import Action, Decision
from tuneloop.rounds.ledger import Ledger, RoundClaim, RoundRecord, StageRecord

NOVA = "amazon.nova-micro-v1:0:128k"
ESCROW = "customer-escrow-123456789012-smtj-abc"
"""The training service's escrow bucket, where an SMTJ job's checkpoint lands."""
KB = 1024


# --- records -----------------------------------------------------------------------------------


def stage_uri(root: str | Path, n: int, stage: str) -> str:
    return f"{root}/rounds/{n:04d}/demo-r{n:04d}-{stage}"


def checkpoint(
    uri: str,
    output_uri: str,
    *,
    model_type: str = NOVA,
    technique: Technique = Technique.LORA,
    lineage: tuple[Method, ...] = (Method.SFT,),
) -> Checkpoint:
    """A stage's checkpoint; on SMTJ when its output is on S3, else on the local backend."""
    return Checkpoint(
        uri=uri,
        model_type=model_type,
        technique=technique,
        platform=Platform.SMTJ if storage.is_s3(output_uri) else Platform.LOCAL,
        lineage=lineage,
        output_uri=output_uri,
    )


def stage_record(
    name: str,
    output_uri: str,
    *,
    method: Method = Method.SFT,
    technique: Technique = Technique.LORA,
    **fields: Any,
) -> StageRecord:
    return StageRecord(
        name=name,
        method=method,
        technique=technique,
        job_name=output_uri.rstrip("/").rsplit("/", 1)[-1],
        recipe={},
        output_uri=output_uri,
        **fields,
    )


def judged(
    n: int,
    *,
    action: Action = Action.CONTINUE,
    promoted: bool,
    champion_round: int | None,
    next_round: int | None,
    next_base: str | None = None,
    next_base_round: int | None = None,
) -> Decision:
    return Decision(
        round=n,
        action=action,
        reason="judged",
        promoted=promoted,
        champion_round=champion_round,
        next_round=next_round,
        next_base=next_base,
        next_base_round=next_base_round,
    )


def continuing(n: int, *, champion: int, next_base: str | None = None) -> Decision:
    """Round ``n`` goes on with round ``n + 1``; it is promoted when it is the ``champion``,
    and ``next_base`` (a folder of the champion's round) is where the next round starts."""
    return judged(
        n,
        promoted=champion == n,
        champion_round=champion,
        next_round=n + 1,
        next_base=next_base,
        next_base_round=champion if next_base else None,
    )


def round_record(
    n: int,
    stages: list[StageRecord],
    decision: Decision,
    *,
    metrics: dict[str, float] | None = None,
    base: str = "base",
    **fields: Any,
) -> RoundRecord:
    return RoundRecord(
        campaign="demo",
        round=n,
        run_id=f"manual__{n}",
        base=base,
        stages=stages,
        metrics={"accuracy": 0.5} if metrics is None else metrics,
        decision=decision,
        **fields,
    )


def judged_round(
    n: int,
    root: str,
    *,
    stages: tuple[str, ...],
    promoted: bool,
    action: Action = Action.CONTINUE,
    next_round: int | None,
    next_base_round: int | None,
    rollback_of: int | None = None,
) -> RoundRecord:
    """Round ``n`` under ``root``, one folder a stage: its own champion when ``promoted``; the
    next round, if any, starts from ``next_base_round``'s last stage."""
    next_base = stage_uri(root, next_base_round, stages[-1]) if next_base_round else None
    return round_record(
        n,
        [stage_record(name, stage_uri(root, n, name)) for name in stages],
        judged(
            n,
            action=action,
            promoted=promoted,
            champion_round=n if promoted else None,
            next_round=next_round,
            next_base=next_base,
            next_base_round=next_base_round,
        ),
        rollback_of=rollback_of,
    )


def round_claim(
    n: int, *, run_id: str = "", base_round: int | None = None, base_output_uri: str = ""
) -> RoundClaim:
    return RoundClaim(
        campaign="demo",
        round=n,
        run_id=run_id or f"run-{n}",
        base_round=base_round,
        base_output_uri=base_output_uri,
    )


# --- campaigns ---------------------------------------------------------------------------------


def local_fields(output_root: str | Path, **retention: Any) -> dict[str, Any]:
    """A local-backend campaign "demo" as a campaign file's fields."""
    return {
        "name": "demo",
        "backend": {"type": "local", "output_root": str(output_root)},
        "model_type": "local.tiny-chat-v1",
        "technique": "full",
        "stages": [
            {
                "method": "sft",
                "recipe": "local/sft-full.yaml",
                "datasets": {"train": "data/sft.jsonl"},
            }
        ],
        "evaluation": {"recipe": "local/eval-gen-qa.yaml"},
        "gate": {"primary_metric": "exact_match"},
        "retention": retention,
    }


def s3_fields(
    bucket: str, *, backend_region: str = "us-east-1", **retention: Any
) -> dict[str, Any]:
    """An SMTJ campaign "demo" whose output root is ``s3://<bucket>/tuneloop``, as a campaign
    file's fields (``retention`` may hold its own price ``region``)."""
    return {
        "name": "demo",
        "backend": {
            "type": "smtj",
            "region": backend_region,
            "output_root": f"s3://{bucket}/tuneloop",
            "role_arn": "arn:aws:iam::123456789012:role/Nova",
        },
        "model_type": NOVA,
        "technique": "lora",
        "stages": [
            {"method": "sft", "recipe": "sft.yaml", "datasets": {"train": f"s3://{bucket}/d.jsonl"}}
        ],
        "evaluation": {"recipe": "eval.yaml"},
        "gate": {"primary_metric": "accuracy"},
        "retention": retention,
    }


def local_campaign(output_root: str | Path, **retention: Any) -> Campaign:
    return Campaign.model_validate(local_fields(output_root, **retention))


def s3_campaign(bucket: str, *, backend_region: str = "us-east-1", **retention: Any) -> Campaign:
    return Campaign.model_validate(s3_fields(bucket, backend_region=backend_region, **retention))


def campaign_file(folder: Path, fields: dict[str, Any]) -> CampaignFile:
    """``fields`` written to ``<folder>/demo.yaml`` and parsed as a campaign file."""
    path = folder / "demo.yaml"
    text = yaml.safe_dump(fields, sort_keys=False)
    path.write_text(text)
    return parse_campaign(text, path)


STAGE_YAML = {
    "sft": """\
  - method: sft
    recipe: local/sft-full.yaml
    datasets:
      train: data/sft-train.jsonl
""",
    "rft": """\
  - method: rft
    recipe: local/rft-full.yaml
    datasets:
      train: data/rft-train.jsonl
    reward_function: tuneloop.local.demo_task:reward
""",
}


def keep_two_text(
    output_root: str,
    *,
    name: str = "keep-two",
    description: str = "a campaign for the lifecycle commands",
    stages: tuple[str, ...] = ("sft", "rft"),
    extra: str = "",
) -> str:
    """A local campaign file the round DAG can play, keeping its last two rounds; ``extra``
    lines go on under ``retention:``."""
    return f"""\
name: {name}
description: {description}
backend:
  type: local
  output_root: {output_root}
model_type: local.tiny-chat-v1
technique: full
stages:
{"".join(STAGE_YAML[stage] for stage in stages)}\
evaluation:
  recipe: local/eval-gen-qa.yaml
  dataset: data/eval.jsonl
  metrics: [exact_match]
gate:
  primary_metric: exact_match
  targets:
    exact_match: 0.99
  max_rounds: 9
retention:
  keep_last: 2
{extra}"""


# --- stage folders -----------------------------------------------------------------------------


def stage_folder(folder: Path, *, weights: bytes, manifest: str, log: str | None = None) -> Path:
    """A stage's output folder as a local job leaves it: ``manifest.json``,
    ``checkpoint/weights.bin`` and, when ``log`` is given, ``logs/train.log``."""
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "manifest.json").write_text(manifest)
    (folder / "checkpoint" / "weights.bin").write_bytes(weights)
    if log is not None:
        (folder / "logs").mkdir()
        (folder / "logs" / "train.log").write_text(log)
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by its relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- a local campaign tree ---------------------------------------------------------------------

STAGES = ("sft", "rft")


@dataclass
class Tree:
    """A local campaign "demo" under ``<base>/out`` with recorded rounds of two stages (SFT
    then RFT) and an evaluation folder each, all on disk."""

    cf: CampaignFile
    root: Path
    rounds: int
    champion: int

    @property
    def campaign(self) -> Campaign:
        return self.cf.campaign

    def folder(self, n: int, stage: str) -> Path:
        return Path(stage_uri(self.root, n, stage))

    def evaluation(self, n: int) -> Path:
        return Path(stage_uri(self.root, n, "eval"))

    def tarball(self, folder: Path) -> Path:
        return Path(archive_location(str(self.root), str(folder)))

    def store(self) -> LifecycleStore:
        return LifecycleStore.for_campaign(self.campaign)

    def ledger(self) -> Ledger:
        return Ledger.for_campaign(self.campaign)


def build_tree(
    base: Path,
    *,
    rounds: int = 5,
    champion: int | None = None,
    keep_last: int = 2,
    **retention: Any,
) -> Tree:
    """A local campaign with ``rounds`` recorded rounds; every round up to ``champion`` (the
    latest by default) is promoted, the later ones are not, and each round starts from the
    previous one's last stage."""
    champion = rounds if champion is None else champion
    cf = campaign_file(base, local_fields(base / "out", keep_last=keep_last, **retention))
    tree = Tree(cf=cf, root=base / "out" / "demo", rounds=rounds, champion=champion)
    ledger = tree.ledger()
    for n in range(1, rounds + 1):
        for stage in STAGES:
            fill(tree.folder(n, stage), f"{n}-{stage}")
        fill(tree.evaluation(n), f"{n}-eval")
        ledger.write(tree_record(tree, n))
    return tree


def fill(folder: Path, seed: str) -> None:
    stage_folder(
        folder,
        weights=seed.encode() * 2000,
        manifest=f'{{"checkpoint": "{seed}"}}',
        log=f"trained {seed}\n",
    )


def tree_record(tree: Tree, n: int) -> RoundRecord:
    best = min(n, tree.champion)
    return round_record(
        n,
        [
            stage_record(
                stage,
                str(tree.folder(n, stage)),
                method=Method(stage),
                technique=Technique.FULL,
            )
            for stage in STAGES
        ],
        continuing(n, champion=best, next_base=str(tree.folder(best, STAGES[-1]))),
        metrics={"exact_match": 0.1 * n},
        base="tiny-chat" if n == 1 else str(tree.folder(n - 1, STAGES[-1])),
        base_round=None if n == 1 else n - 1,
        evaluation={"result_uri": str(tree.evaluation(n))},
    )


# --- an S3 campaign tree (moto) ----------------------------------------------------------------

JOB_OBJECTS = {
    "manifest.json": b"{}",
    "output/output.tar.gz": bytes(200 * KB),
    "tensorboard/events.out": bytes(200 * KB),
}
"""What an SMTJ training job leaves in its output folder."""


@dataclass
class S3Tree:
    """An SMTJ campaign "demo" on moto, under ``s3://<bucket>/tuneloop``, with recorded rounds
    each promoted and continuing from its own last stage."""

    cf: CampaignFile
    bucket: str
    root: str
    rounds: int

    @property
    def campaign(self) -> Campaign:
        return self.cf.campaign

    def folder(self, n: int, stage: str = "sft") -> str:
        return stage_uri(self.root, n, stage)

    def escrow_prefix(self, n: int) -> str:
        return f"s3://{ESCROW}/demo-r{n:04d}-sft/step_10"

    def store(self) -> LifecycleStore:
        return LifecycleStore.for_campaign(self.campaign)


def build_s3_tree(
    base: Path,
    *,
    rounds: int = 3,
    stages: tuple[str, ...] = ("sft",),
    job_objects: dict[str, bytes] | None = None,
    escrow: bool = True,
    **retention: Any,
) -> S3Tree:
    """Each round's stage folders hold ``job_objects`` (by default `JOB_OBJECTS`); with
    ``escrow``, the last stage's checkpoint is in the service's escrow bucket."""
    from tuneloop.storage import s3_client

    client = s3_client()
    bucket = f"lifecycle-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    if escrow:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=ESCROW)
    cf = campaign_file(base, s3_fields(bucket, **retention))
    tree = S3Tree(cf, bucket, f"s3://{bucket}/tuneloop/demo", rounds)
    ledger = Ledger.for_campaign(tree.campaign)
    for n in range(1, rounds + 1):
        records = []
        for stage in stages:
            folder = tree.folder(n, stage)
            prefix = folder.removeprefix(f"s3://{bucket}/")
            for name, body in (JOB_OBJECTS if job_objects is None else job_objects).items():
                client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)
            held = None
            if escrow and stage == stages[-1]:
                escrow_key = tree.escrow_prefix(n).removeprefix(f"s3://{ESCROW}/")
                client.put_object(
                    Bucket=ESCROW, Key=f"{escrow_key}/model.bin", Body=bytes(300 * KB)
                )
                held = checkpoint(tree.escrow_prefix(n), folder)
            records.append(stage_record(stage, folder, method=Method(stage), checkpoint=held))
        ledger.write(
            round_record(
                n,
                records,
                continuing(n, champion=n, next_base=records[-1].output_uri),
                metrics={"accuracy": 0.1 * n},
                base="nova-micro",
            )
        )
    return tree


# --- bucket lifecycle rules --------------------------------------------------------------------

EXPIRE_LOGS = {
    "ID": "expire-logs",
    "Status": "Enabled",
    "Filter": {"Prefix": "logs/"},
    "Expiration": {"Days": 30},
}
"""A bucket's own lifecycle rule, which ours must leave as it is."""


def with_rules(bucket: str, *rules: dict[str, Any]) -> None:
    """``rules`` are the bucket's lifecycle rules."""
    from tuneloop.storage import s3_client

    s3_client().put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": list(rules)}
    )
