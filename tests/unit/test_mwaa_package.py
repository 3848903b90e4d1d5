"""`make mwaa`'s build (deploy/mwaa/build.py): the plugins zip MWAA unpacks, and the
requirements file, resolved by pip against PyPI on MWAA's Airflow constraints."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_build():
    spec = importlib.util.spec_from_file_location("mwaa_build", REPO / "deploy/mwaa/build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build = _load_build()

# What the Airflow 3.3.1 image itself installs before any user requirement (the image's
# bootstrap/02-airflow/001-install-required-pip-packages.sh), resolved together with ours so
# that pip shows ours fit beside Airflow's own dependencies.
MWAA_IMAGE_PACKAGES = [
    "apache-airflow[celery,statsd]==3.3.1",
    "apache-airflow-providers-amazon[aiobotocore]",
    "apache-airflow-providers-standard",
]

# What tuneloop's worker code imports at run time (besides Airflow).
RUNTIME_DISTRIBUTIONS = {
    "mlflow",
    "sagemaker-mlflow",
    "matplotlib",
    "kubernetes",
    "xxhash",
    "hyperscan",
    "msgspec",
    "pydantic",
    "pyyaml",
    "jinja2",
    "boto3",
    "botocore",
    "sqlalchemy",
    "requests",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build.build(tmp_path_factory.mktemp("mwaa"), "s3://example-bucket")


def test_the_zip_holds_the_package_and_the_plugin_file_at_its_top(built):
    names = zipfile.ZipFile(built["plugins.zip"]).namelist()

    assert {name.split("/")[0] for name in names} == {
        "tuneloop",
        "tuneloop_plugin.py",
        ".airflowignore",
    }
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "egg-info" in n]
    package = REPO / "plugins"
    sources = {
        p.relative_to(package).as_posix()
        for p in (package / "tuneloop").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert sources == {n for n in names if n.startswith("tuneloop/")}
    assert {"tuneloop/__init__.py", "tuneloop/py.typed"} <= set(names)
    ignored = zipfile.ZipFile(built["plugins.zip"]).read(".airflowignore").decode()
    assert [line for line in ignored.splitlines() if not line.startswith("#")] == ["tuneloop/"]


def test_the_zip_is_the_same_bytes_when_built_again(built, tmp_path):
    again = build.build(tmp_path, "s3://example-bucket")
    assert again["plugins.zip"].read_bytes() == built["plugins.zip"].read_bytes()


def test_the_plugin_imports_from_the_unpacked_zip(built, tmp_path):
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(built["plugins.zip"]).extractall(plugins)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import tuneloop_plugin, tuneloop;"
        "from tuneloop.recipes.catalog import MODELS;"
        "print(tuneloop_plugin.TuneloopPlugin.name, tuneloop.__file__, len(MODELS))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", probe, str(plugins)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    name, package_file, models = result.stdout.split()
    assert name == "tuneloop"
    assert Path(package_file).is_relative_to(plugins)
    assert int(models) > 0


def test_requirements_start_with_the_constraints_and_leave_the_image_alone(built):
    lines = built["requirements.txt"].read_text().splitlines()
    constraints = {r.key: r.version for r in build.pinned(build.CONSTRAINTS_COPY)}
    listed = build.pinned(built["requirements.txt"])

    assert lines[0] == (
        '--constraint "https://raw.githubusercontent.com/apache/airflow/'
        'constraints-3.3.1/constraints-3.12.txt"'
    )
    assert constraints["apache-airflow-providers-amazon"] == "9.34.0"
    assert not [r.name for r in listed if build.is_shipped(r)]
    for requirement in listed:
        if requirement.key in constraints:
            assert requirement.version == constraints[requirement.key], requirement
    assert {"mlflow", "sagemaker-mlflow", "kubernetes", "xxhash"} <= {r.key for r in listed}


def test_the_startup_script_points_tuneloop_at_the_dags_folder(built):
    script = built["startup.sh"].read_text()
    assert script.startswith("#!/bin/sh\n")
    assert 'TUNELOOP_RECIPES_DIR="${AIRFLOW_HOME:-/usr/local/airflow}/dags/recipes"' in script
    assert os.access(built["startup.sh"], os.X_OK)
    upload = built["upload.txt"].read_text()
    assert "s3://example-bucket/plugins.zip" in upload
    assert "tuneloop.trigger_settle_seconds" in upload


@pytest.mark.slow
def test_pip_resolves_the_requirements_on_mwaa_constraints(built, tmp_path):
    """The one test that reads PyPI: pip resolves MWAA's requirements.txt, beside what the
    image installs, for CPython 3.12 on Amazon Linux 2023 (glibc 2.34), wheels only."""
    # The constraints line points at GitHub; the pinned copy of that file stands in for it.
    requirements = tmp_path / "requirements.txt"
    lines = built["requirements.txt"].read_text().splitlines()
    assert lines[0] == f'--constraint "{build.CONSTRAINTS_URL}"'
    requirements.write_text("\n".join([f'--constraint "{build.CONSTRAINTS_COPY}"', *lines[1:]]))
    image = tmp_path / "image.txt"
    image.write_text("\n".join(MWAA_IMAGE_PACKAGES) + "\n")
    report = tmp_path / "report.json"
    platforms = ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"]
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--only-binary=:all:",
        *[arg for platform in platforms for arg in ("--platform", platform)],
        "-r",
        str(requirements),
        "-r",
        str(image),
    ]
    # PyPI alone, with no constraint or index from this machine's pip configuration.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PIP_CONSTRAINT", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    resolved = {
        build.normalized(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    constraints = {r.key: r.version for r in build.pinned(build.CONSTRAINTS_COPY)}
    broken = {
        name: (version, constraints[name])
        for name, version in resolved.items()
        if name in constraints and constraints[name] != version
    }
    assert not broken
    assert resolved["apache-airflow"] == "3.3.1"
    assert resolved["apache-airflow-core"] == "3.3.1"
    assert (
        resolved["apache-airflow-providers-amazon"]
        == constraints["apache-airflow-providers-amazon"]
    )
    assert set(resolved) >= RUNTIME_DISTRIBUTIONS
    assert resolved["mlflow"] == "3.17.2"
