"""Work functions for runner tests, imported by job processes from this folder.

Each takes its settings from the recipe: a dict, or the path of a YAML file holding one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def _params(spec: Any) -> dict[str, Any]:
    recipe = spec.recipe
    if isinstance(recipe, str):
        recipe = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    return dict(recipe or {})


def _record(spec: Any, name: str, text: str) -> None:
    with open(spec.outputs_dir / name, "a", encoding="utf-8") as handle:
        handle.write(text + "\n")


def succeed(spec: Any, progress: Any) -> dict[str, Any]:
    """Counts to `steps`, sleeping `sleep` seconds a step; prints a line a step. With `hold` (a
    path), waits after step `hold_after` until that file exists: a test sees the job midway
    for as long as it needs, however busy the machine."""
    params = _params(spec)
    steps, delay = int(params.get("steps", 5)), float(params.get("sleep", 0.05))
    hold_after = int(params.get("hold_after", 0))
    _record(spec, "starts.txt", str(os.getpid()))
    for step in range(1, steps + 1):
        time.sleep(delay)
        print(f"step {step} of {steps} – loss {1 / step:.3f}")
        progress(step, steps)
        if step == hold_after and params.get("hold"):
            while not Path(params["hold"]).exists():
                time.sleep(0.02)
    (spec.outputs_dir / "result.txt").write_text("done\n")
    return {"steps": steps, "output": spec.output}


def fail(spec: Any, progress: Any) -> None:
    print("loading the batch")
    progress(1, 4)
    raise ValueError("bad batch 3: token id out of range")


def hang(spec: Any, progress: Any) -> None:
    """Starts `children` sleeping children (one ignoring SIGTERM if `stubborn`), then waits."""
    params = _params(spec)
    _record(spec, "starts.txt", str(os.getpid()))
    ready = spec.outputs_dir / "stubborn.ready"
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(int(params.get("children", 0)))]
    if params.get("stubborn"):
        code = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "open(sys.argv[1], 'w').close()\n"
            "time.sleep(30)\n"
        )
        children.append(subprocess.Popen([sys.executable, "-c", code, str(ready)]))
        while not ready.exists():
            time.sleep(0.01)
    for child in children:
        _record(spec, "children.txt", str(child.pid))
    progress(1, 100)
    print("last words before hanging", flush=True)
    _record(spec, "ready.txt", "ready")
    while True:
        time.sleep(0.05)
