"""What the Airflow dag-processor pays to parse each DAG file in dags/.

Each DAG file is measured with the campaigns shipped in recipes/campaigns/, and the round DAG
file once more with a folder of 20 campaign files (the shipped ones copied under new names),
against the targets: a fresh parse in 50 ms or less with the shipped campaigns, under 300 ms
with 20. Each measurement is a fresh interpreter that first imports what the dag-processor
has already loaded (``airflow.sdk``, the standard provider's operators, and the Airflow modules
the DAG file names, which the processor imports before it starts a parse), then executes one
DAG file the way the processor does, twice: the first time includes importing tuneloop's
modules (what a fresh parsing process pays), the second is a re-parse in a warm process.
Garbage left by the Airflow imports is collected before timing (a full collection of Airflow's
heap costs ~100 ms and would land on whatever code runs next). It also lists any heavy library
the file pulled in (there must be none). Exits 1 when a heavy library was loaded or a target
was missed.

    python benchmarks/dag_parse.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "mlflow", "kubernetes", "torch", "transformers", "sagemaker")
SHIPPED_TARGET_MS = 50.0
MANY_CAMPAIGNS = 20
MANY_TARGET_MS = 300.0
ROUND_DAG_FILE = ROOT / "dags" / "tuneloop_rounds.py"

CHILD = """
import importlib.util, json, sys, time
import airflow.sdk
import airflow.sdk.execution_time.comms  # the processor talks to its supervisor with these
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
import gc
# Collect what the imports above left, once, and keep it out of later collections: a full
# collection of Airflow's own heap (~100 ms) would otherwise land on whichever file runs next.
# As the dag-processor does before it starts a parsing process: the Airflow modules the DAG
# file names are imported ahead ([dag_processor] parsing_pre_import_modules).
from airflow.utils.file import iter_airflow_imports
for name in iter_airflow_imports(sys.argv[1]):
    importlib.import_module(name)
gc.collect()
gc.freeze()
times = []
for attempt in range(2):
    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location(f"dagfile{attempt}", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    times.append((time.perf_counter() - start) * 1000)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"first_ms": times[0], "again_ms": times[1], "heavy": heavy}))
"""


def many_campaigns(folder: Path, count: int) -> Path:
    """``count`` campaign files in ``folder``: the shipped ones in turn, each under a new name."""
    shipped = sorted((ROOT / "recipes" / "campaigns").rglob("*.yaml"))
    for index in range(count):
        source = shipped[index % len(shipped)]
        lines = source.read_text().splitlines(keepends=True)
        renamed = [f"name: bench-{index:02d}\n" if ln.startswith("name:") else ln for ln in lines]
        (folder / f"bench-{index:02d}.yaml").write_text("".join(renamed))
    return folder


def measure(path: Path, env: dict[str, str], repeat: int) -> tuple[float, float, list[str]]:
    """Median first-parse and re-parse milliseconds of ``path`` over ``repeat`` fresh processes."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), json.dumps(HEAVY)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(1)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = statistics.median(r["first_ms"] for r in runs)
    again = statistics.median(r["again_ms"] for r in runs)
    return first, again, sorted({m for r in runs for m in r["heavy"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "plugins"),
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="dag-parse-"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    env.pop("TUNELOOP_CAMPAIGNS_DIR", None)
    failed = False
    print(f"{'DAG file':44} {'first parse ms':>15} {'re-parse ms':>12}  target   heavy modules")
    cases = [(path, path.name, env, None) for path in sorted((ROOT / "dags").glob("*.py"))]
    many = many_campaigns(Path(tempfile.mkdtemp(prefix="campaigns-")), MANY_CAMPAIGNS)
    many_env = {**env, "TUNELOOP_CAMPAIGNS_DIR": str(many)}
    label = f"{ROUND_DAG_FILE.name} ({MANY_CAMPAIGNS} campaigns)"
    cases.append((ROUND_DAG_FILE, label, many_env, MANY_TARGET_MS))
    for path, name, case_env, target in cases:
        if target is None and path == ROUND_DAG_FILE:
            target = SHIPPED_TARGET_MS
        first, again, heavy = measure(path, case_env, args.repeat)
        missed = target is not None and first > target
        failed |= bool(heavy) or missed
        shown = "-" if target is None else f"{'>' if missed else '<='}{target:.0f}"
        print(f"{name:44} {first:15.1f} {again:12.1f}  {shown:7}  {', '.join(heavy) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
