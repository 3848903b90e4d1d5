"""Device, precision and thread choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.local import device
from tuneloop.local.device import MAX_THREADS, THREADS_ENV, thread_count


def test_threads_use_every_core_up_to_the_cap() -> None:
    assert thread_count({}, cores=2) == 2
    assert thread_count({}, cores=1) == 1
    assert thread_count({}, cores=64) == MAX_THREADS


def test_threads_env_override() -> None:
    assert thread_count({THREADS_ENV: "3"}, cores=64) == 3
    assert thread_count({THREADS_ENV: " 12 "}, cores=2) == 12
    for bad in ("two", "0", "-1"):
        with pytest.raises(ValueError, match=THREADS_ENV):
            thread_count({THREADS_ENV: bad}, cores=2)


def test_importing_device_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, tuneloop.local.device; print('torch' in sys.modules)"
    plugins = str(Path(__file__).resolve().parents[3] / "plugins")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": plugins}
    )
    assert result.stdout.strip() == "False", result.stderr


def test_cpu_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(THREADS_ENV, "1")
    before = torch.get_num_threads()
    try:
        choice = device.choose_device("cpu")
        assert (choice.type, choice.bf16, choice.threads) == ("cpu", False, 1)
        assert choice.dtype is torch.float32 and choice.device == torch.device("cpu")
        assert torch.get_num_threads() == 1
        assert "float32" in choice.describe()
    finally:  # both settings are process-wide: leave the other tests' process as it was
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)


def test_unknown_or_missing_device(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="tpu"):
        device.choose_device("tpu", configure=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            device.choose_device("cuda", configure=False)
        monkeypatch.setenv(device.DEVICE_ENV, "auto")
        assert device.choose_device(configure=False).type == "cpu"
