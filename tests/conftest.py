"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import airflow_env  # noqa: F401  (sets the Airflow environment before anything imports Airflow)

E2E_FOLDER = Path(__file__).parent / "e2e"
E2E_NODEIDS = "tests/e2e/"
"""How the end-to-end tests' node ids begin (relative to the repository, pytest's rootdir)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests run last: they share one real Airflow stack, started by the first
    of them and stopped when the session ends, which the other tests need not wait for. Under
    pytest-xdist (``make test`` runs two processes) `pytest_xdist_make_scheduler` keeps them
    together instead."""
    items.sort(key=lambda item: E2E_FOLDER in Path(str(item.fspath)).parents)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduler, with every end-to-end test in one work unit: one process runs
    them all, on one Airflow stack, while the other runs the rest test by test. The unit is
    the largest, so it is handed out first (xdist orders units by size)."""
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return E2E_NODEIDS if nodeid.startswith(E2E_NODEIDS) else nodeid

    return EndToEndTogether(config, log)


_WORKER_REPORTS: list[str] = []
"""The end-to-end stack's start and stop lines, handed over by the pytest-xdist worker that ran
the end-to-end tests (tests/e2e/conftest.py)."""


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _WORKER_REPORTS.extend(getattr(node, "workeroutput", {}).get("e2e_stack_report", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _WORKER_REPORTS:
        terminalreporter.section("end-to-end stack")
        for line in _WORKER_REPORTS:
            terminalreporter.write_line(line)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write ``text`` to ``tmp_path/name`` (creating folders) and return the path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on a free loopback port; tuneloop's storage module talks to it."""
    import os
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "TUNELOOP_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        TUNELOOP_S3_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The local demo's datasets at their default sizes (seed 0), written once per test run."""
    from tuneloop.local.demo_task import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo-data"), seed=0)


@pytest.fixture(scope="session")
def tiny_chat_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tuneloop cache folder holding the tiny chat model, built once per test run.

    Pass it as ``cache_dir`` (or set TUNELOOP_HOME to it) to load ``tiny-chat`` from it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tuneloop.local.model import ensure_tiny_chat

    home = tmp_path_factory.mktemp("tuneloop-home")
    ensure_tiny_chat(home)
    return home
