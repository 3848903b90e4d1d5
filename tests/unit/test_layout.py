"""The floor plan of the package, where import-linter cannot see it.

The layers, the pure gate, the Airflow-free local trainer and the absence of import cycles are
import contracts in pyproject.toml (`lint-imports`, run by `make lint` and `make test`). Two rules
need more than a package-level import graph: how many modules sit flat at the package top, and
which parts of Airflow the job backends use (provider hooks yes, DAG machinery no: import-linter
sees third-party packages only by their top-level name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

from package_modules import package_modules

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "tuneloop"
MAX_FLAT_MODULES = 8

# Airflow's DAG machinery: what defines DAGs, tasks, operators, sensors and triggers. A job
# backend talks to its service through provider hooks; the Airflow face (tuneloop.pipeline)
# wraps it in operators and triggers.
DAG_MODULES = (
    "airflow.models",
    "airflow.decorators",
    "airflow.operators",
    "airflow.sensors",
    "airflow.triggers",
    "airflow.sdk.definitions",
    "airflow.sdk.bases.operator",
    "airflow.sdk.bases.sensor",
    "airflow.sdk.bases.decorator",
)
DAG_PROVIDER_PARTS = frozenset({"operators", "sensors", "triggers"})
DAG_NAMES = frozenset(
    {
        "DAG",
        "dag",
        "task",
        "task_group",
        "TaskGroup",
        "BaseOperator",
        "BaseSensorOperator",
        "BaseTrigger",
        "XComArg",
        "Param",
        "chain",
        "setup",
        "teardown",
    }
)


def test_at_most_eight_modules_sit_flat_at_the_package_top() -> None:
    flat = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(flat) <= MAX_FLAT_MODULES, (
        f"{len(flat)} modules at the top of tuneloop/ (at most {MAX_FLAT_MODULES}): "
        f"{', '.join(flat)}; give the new one a home in the subpackage of its concern"
    )


def _is_dag_machinery(module: str, names: list[str]) -> bool:
    if not (module == "airflow" or module.startswith("airflow.")):
        return False
    if module.startswith(DAG_MODULES):
        return True
    parts = module.split(".")
    if parts[:2] == ["airflow", "providers"] and DAG_PROVIDER_PARTS & set(parts[2:]):
        return True
    if module in ("airflow", "airflow.sdk"):
        # `import airflow.sdk` reaches everything; `from airflow.sdk import BaseHook` is fine.
        return not names or bool(DAG_NAMES & set(names))
    return False


def airflow_dag_imports(path: Path, shown_as: str) -> list[str]:
    """``shown_as:line: import`` for every import of Airflow's DAG machinery in ``path`` (imports
    inside functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imports: list[tuple[str, list[str]]] = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imports = [(node.module, [alias.name for alias in node.names])]
        else:
            continue
        for module, names in imports:
            if _is_dag_machinery(module, names):
                shown = f"from {module} import {', '.join(names)}" if names else f"import {module}"
                found.append(f"{shown_as}:{node.lineno}: {shown}")
    return found


def module_path(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else (PACKAGE / relative).with_suffix(".py")


def test_job_backends_use_airflow_hooks_but_no_dag_machinery() -> None:
    graph = grimp.build_graph("tuneloop", cache_dir=None)
    backends = graph.find_descendants("tuneloop.jobs") | {"tuneloop.jobs"}
    # What the backends import from tuneloop runs in the backends too.
    reached = backends | graph.find_upstream_modules("tuneloop.jobs", as_package=True)
    assert "tuneloop.jobs.hyperpod" in reached and "tuneloop.storage" in reached
    paths = sorted(module_path(name) for name in reached)
    found = [
        line for path in paths for line in airflow_dag_imports(path, str(path.relative_to(PACKAGE)))
    ]
    assert found == [], "job backends (and what they import) must not import DAG code:\n" + (
        "\n".join(found)
    )


def test_the_dag_machinery_check_tells_hooks_from_dag_code(tmp_path: Path) -> None:
    path = tmp_path / "example.py"
    path.write_text(
        "from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook\n"
        "from airflow.sdk import BaseHook\n"
        "def build():\n"
        "    from airflow.sdk import DAG\n"
        "    from airflow.providers.amazon.aws.operators.sagemaker import (\n"
        "        SageMakerTrainingOperator,\n"
        "    )\n"
        "    import airflow.models\n"
    )
    assert airflow_dag_imports(path, "example.py") == [
        "example.py:4: from airflow.sdk import DAG",
        "example.py:5: from airflow.providers.amazon.aws.operators.sagemaker import "
        "SageMakerTrainingOperator",
        "example.py:8: import airflow.models",
    ]


def exception_classes() -> list[tuple[str, type[BaseException]]]:
    """Every exception class the package defines, by ``module.Class``."""
    import importlib
    import inspect

    found = []
    for name in package_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            is_error = issubclass(cls, BaseException) and not issubclass(cls, Warning)
            if is_error and cls.__module__ == name:
                found.append((f"{name}.{cls_name}", cls))
    return found


def test_every_public_error_is_a_tuneloop_error_named_error() -> None:
    """An error a user can meet derives from TuneloopError (so the task bodies and the CLI turn
    it into one clear line) and is named ``...Error``; control-flow exceptions stay private."""
    from tuneloop.errors import TuneloopError

    classes = exception_classes()
    assert len(classes) > 20
    wrong = [
        name
        for name, cls in classes
        if not cls.__name__.startswith("_")
        and not (issubclass(cls, TuneloopError) and cls.__name__.endswith("Error"))
    ]
    assert wrong == []
