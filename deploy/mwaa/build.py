"""Build what an Amazon MWAA environment needs to run tuneloop, under ``build/mwaa/``.

- ``plugins.zip``: the tuneloop package and ``tuneloop_plugin.py`` at the top, with the plugins
  folder's ``.airflowignore`` (MWAA unpacks the zip into ``$AIRFLOW_HOME/plugins``, and Airflow's
  plugin loader would otherwise import every module of the package as a top-level file).
- ``requirements.txt``: what tuneloop adds to MWAA's image, on MWAA's constraints. Packages the
  image already installs (Airflow, its providers, boto3, pydantic, ...) are left out, so pip never
  reinstalls or upgrades them; a package the constraints pin takes the constraints' version.
- ``startup.sh``: the environment variables that tell tuneloop where its recipes and campaign
  files are (the dags folder; the package is not beside the repository's ``recipes/`` there).
- ``upload.txt``: what to upload where, and the environment's settings (also printed).

Run it with ``make mwaa`` (``MWAA_BUCKET=s3://... make mwaa`` fills in the bucket).
"""

from __future__ import annotations

import argparse
import re
import stat
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

AIRFLOW_VERSION = "3.3.1"
"""The newest Airflow 3 that MWAA runs (aws/amazon-mwaa-docker-images, images/airflow/3.3.1)."""
PYTHON_VERSION = "3.12"
"""The Python of MWAA's Airflow 3 images."""
CONSTRAINTS_URL = (
    "https://raw.githubusercontent.com/apache/airflow/"
    f"constraints-{AIRFLOW_VERSION}/constraints-{PYTHON_VERSION}.txt"
)
CONSTRAINTS_COPY = REPO / "tests" / "data" / "mwaa" / f"constraints-{AIRFLOW_VERSION}-3.12.txt"
"""A pinned copy of the file at CONSTRAINTS_URL (see SOURCE.md beside it)."""

SHIPPED_BY_MWAA = frozenset(
    {"boto3", "botocore", "pydantic", "pyyaml", "jinja2", "msgspec", "requests", "fastapi"}
)
"""Installed by MWAA's image besides apache-airflow and its providers (the image's bill of
materials, images/airflow/3.3.1/BillOfMaterials); a user requirement must not replace them."""

AIRFLOW_HOME = "/usr/local/airflow"
"""Where MWAA keeps its dags and plugins folders."""
DEFAULT_BUCKET = "s3://<your-mwaa-bucket>"

SKIPPED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache"})
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""One timestamp for every zip entry: the same sources give the same bytes (and S3 version)."""


@dataclass(frozen=True)
class Requirement:
    name: str
    version: str
    marker: str

    @property
    def key(self) -> str:
        return normalized(self.name)

    def line(self, version: str | None = None) -> str:
        text = f"{self.name}=={version or self.version}"
        return f"{text}; {self.marker}" if self.marker else text


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(path: Path) -> list[Requirement]:
    """The ``name==version[; marker]`` lines of a requirements or constraints file."""
    found = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^;\s]+)\s*(?:;\s*(.+))?", line)
        if match:
            found.append(Requirement(match[1], match[2], (match[3] or "").strip()))
    return found


def is_shipped(requirement: Requirement) -> bool:
    return requirement.key.startswith("apache-airflow") or requirement.key in SHIPPED_BY_MWAA


def mwaa_requirements(worker: Path, constraints: Path) -> str:
    """MWAA's requirements.txt from the workers' pinned requirements (``worker``)."""
    constrained = {r.key: r.version for r in pinned(constraints)}
    lines = [
        f'--constraint "{CONSTRAINTS_URL}"',
        "",
        f"# tuneloop on Amazon MWAA (Airflow {AIRFLOW_VERSION}, Python {PYTHON_VERSION}),",
        "# written by `make mwaa` from requirements.txt. The image already holds Airflow, its",
        "# providers, boto3, pydantic, PyYAML, Jinja2 and msgspec: they are not listed, so pip",
        "# leaves them alone.",
        "",
    ]
    for requirement in pinned(worker):
        if is_shipped(requirement):
            continue
        version = constrained.get(requirement.key)
        if version and version != requirement.version:
            lines.append(
                f"# {requirement.name}: the constraints' version ({requirement.version} elsewhere)"
            )
        lines.append(requirement.line(version))
    return "\n".join(lines) + "\n"


def plugin_files(plugins: Path) -> list[Path]:
    """Files of the plugins folder that go into the zip, relative to it, sorted."""
    chosen = [Path("tuneloop_plugin.py"), Path(".airflowignore")]
    for path in sorted((plugins / "tuneloop").rglob("*")):
        relative = path.relative_to(plugins)
        if not path.is_file() or path.suffix in (".pyc", ".pyo"):
            continue
        if SKIPPED_PARTS.intersection(relative.parts) or any(
            part.endswith(".egg-info") for part in relative.parts
        ):
            continue
        chosen.append(relative)
    return chosen


def write_plugins_zip(plugins: Path, target: Path) -> list[str]:
    names = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative in plugin_files(plugins):
            info = zipfile.ZipInfo(relative.as_posix(), ZIP_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (plugins / relative).read_bytes())
            names.append(info.filename)
    return names


def startup_script() -> str:
    return f"""#!/bin/sh
# MWAA runs this before each Airflow component starts; what it exports reaches every task.
# tuneloop's recipes and campaign files are uploaded to the dags folder (dags/recipes/).
export TUNELOOP_RECIPES_DIR="${{AIRFLOW_HOME:-{AIRFLOW_HOME}}}/dags/recipes"
export TUNELOOP_CAMPAIGNS_DIR="${{AIRFLOW_HOME:-{AIRFLOW_HOME}}}/dags/recipes/campaigns"
# Relative paths in a campaign resolve against the dags folder, the same on every worker.
export TUNELOOP_PROJECT_DIR="${{AIRFLOW_HOME:-{AIRFLOW_HOME}}}/dags"
"""


def upload_text(bucket: str, out: Path) -> str:
    bucket = bucket.rstrip("/")
    return f"""Amazon MWAA (Airflow {AIRFLOW_VERSION}, Python {PYTHON_VERSION}): built in {out}

Upload:
  aws s3 cp {out}/plugins.zip {bucket}/plugins.zip
  aws s3 cp {out}/requirements.txt {bucket}/requirements.txt
  aws s3 cp {out}/startup.sh {bucket}/startup.sh
  aws s3 cp dags/tuneloop_rounds.py {bucket}/dags/tuneloop_rounds.py
  aws s3 cp dags/tuneloop_lifecycle.py {bucket}/dags/tuneloop_lifecycle.py
  aws s3 sync recipes {bucket}/dags/recipes   (campaign files: recipes/campaigns/)

Environment (console: "DAG code in Amazon S3" and "Airflow configuration options"):
  Airflow version:      {AIRFLOW_VERSION}
  DAGs folder:          {bucket}/dags
  Plugins file:         {bucket}/plugins.zip  (with its S3 object version)
  Requirements file:    {bucket}/requirements.txt  (with its S3 object version)
  Startup script:       {bucket}/startup.sh  (with its S3 object version)
  Airflow configuration options tuneloop reads (all optional):
    tuneloop.trigger_settle_seconds   seconds a job trigger waits after the task defers
                                      (unset: 1.5 x workers.min_heartbeat_interval + 0.5)
    workers.min_heartbeat_interval    read, not changed, to size that wait (Airflow default 5)
  Execution role: the SageMaker, S3, EKS (HyperPod) and SageMaker MLflow permissions the
  campaigns' backends use; MLflow: give backend.mlflow_uri as a tracking server URL or a
  SageMaker managed MLflow ARN (a worker's local disk does not last).
"""


def build(out: Path, bucket: str = DEFAULT_BUCKET) -> dict[str, Path]:
    """Write the four files under ``out``; their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "plugins.zip": out / "plugins.zip",
        "requirements.txt": out / "requirements.txt",
        "startup.sh": out / "startup.sh",
        "upload.txt": out / "upload.txt",
    }
    write_plugins_zip(REPO / "plugins", files["plugins.zip"])
    files["requirements.txt"].write_text(
        mwaa_requirements(REPO / "requirements.txt", CONSTRAINTS_COPY)
    )
    files["startup.sh"].write_text(startup_script())
    files["startup.sh"].chmod(0o755)
    files["upload.txt"].write_text(upload_text(bucket, out))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "mwaa")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="the environment's S3 bucket")
    args = parser.parse_args(argv)
    files = build(args.out, args.bucket or DEFAULT_BUCKET)
    sys.stdout.write(files["upload.txt"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
