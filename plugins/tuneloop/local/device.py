"""Where the local backend runs: one place that picks the device, the precision and the threads.

CUDA with bf16 when a GPU is available (fp32 on a GPU without bf16), else the CPU in fp32. On the
CPU, torch uses every core up to a cap (a model this small gains nothing from more threads and
loses time to synchronisation), and denormal floats are flushed to zero, which keeps tiny
gradients from slowing the arithmetic down.

Environment overrides:

- ``TUNELOOP_DEVICE``: ``cpu``, ``cuda`` or ``auto`` (the default);
- ``TUNELOOP_TORCH_THREADS``: the number of CPU threads torch uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEVICE_ENV = "TUNELOOP_DEVICE"
THREADS_ENV = "TUNELOOP_TORCH_THREADS"
MAX_THREADS = 8
"""More threads than this only add synchronisation cost for the tiny model."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device, precision and CPU threads a local job uses."""

    type: str
    """``cuda`` or ``cpu``."""
    bf16: bool
    """Train with bf16 autocast (and run inference in bf16); fp32 otherwise."""
    threads: int
    """CPU threads torch uses."""
    name: str = ""
    """The GPU's name, or ``cpu``."""

    @property
    def dtype_name(self) -> str:
        return "bfloat16" if self.bf16 else "float32"

    @property
    def device(self) -> Any:
        """The ``torch.device``."""
        import torch

        return torch.device(self.type)

    @property
    def dtype(self) -> Any:
        """The ``torch.dtype`` for inference weights (training keeps fp32 weights)."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    def describe(self) -> str:
        return f"{self.type} ({self.name}), {self.dtype_name}, {self.threads} CPU threads"


def cpu_count() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(env: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """CPU threads for torch: ``TUNELOOP_TORCH_THREADS`` if set, else every core up to
    MAX_THREADS."""
    env = os.environ if env is None else env
    value = env.get(THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={value!r} is not a whole number") from None
        if threads < 1:
            raise ValueError(f"{THREADS_ENV}={value!r} must be at least 1")
        return threads
    return max(1, min(cores or cpu_count(), MAX_THREADS))


def configure_torch(threads: int | None = None) -> int:
    """Set torch's CPU threads and flush denormals; return the thread count. Safe to repeat.

    Both settings hold for the whole process (flushing denormals sets the CPU's floating-point
    mode, which other numeric code in the process then sees too): call it in job processes."""
    import torch

    threads = threads or thread_count()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return threads


def choose_device(prefer: str | None = None, *, configure: bool = True) -> DeviceChoice:
    """Pick the device: ``prefer`` (or ``TUNELOOP_DEVICE``) ``cpu``, ``cuda`` or ``auto``.

    ``cuda`` when asked for and none is available raises RuntimeError rather than training on
    the CPU for hours. With ``configure`` (the default), torch's threads are set as well.
    """
    import torch

    prefer = (prefer or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if prefer not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device {prefer!r} is not one of auto, cpu, cuda")
    threads = configure_torch() if configure else thread_count()
    cuda = torch.cuda.is_available()
    if prefer == "cuda" and not cuda:
        raise RuntimeError(
            "a CUDA device was asked for but torch sees none (is this torch's CPU build?)"
        )
    if cuda and prefer != "cpu":
        return DeviceChoice(
            type="cuda",
            bf16=bool(torch.cuda.is_bf16_supported()),
            threads=threads,
            name=torch.cuda.get_device_name(0),
        )
    return DeviceChoice(type="cpu", bf16=False, threads=threads, name="cpu")
