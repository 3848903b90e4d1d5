"""What the dag-processor pays for: the modules a DAG imports must not pull in heavy libraries.

ruff's TID253 bans module-level imports of these libraries; this test checks what importing
every tuneloop module actually loads, which also catches an indirect import through a
third-party module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from package_modules import package_modules

REPO = Path(__file__).resolve().parents[2]
HEAVY = [
    "boto3",
    "botocore",
    "aiobotocore",
    "mlflow",
    "kubernetes",
    "torch",
    "transformers",
    "peft",
    "trl",
    "sagemaker",
    # Not "airflow.providers.amazon": airflow.sdk itself loads that package's provider info
    # (a small dict) through provider discovery. Its hooks and operators live under .aws.
    "airflow.providers.amazon.aws",
]


def test_package_modules_load_no_heavy_library() -> None:
    modules = package_modules()
    assert "tuneloop.rounds.plan" in modules and "tuneloop.recipes.render" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "plugins")},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
