"""The job tasks' extra links in the Airflow UI, clicked in a real (headless) browser: "Job
console" opens the local job's page on the API server, "MLflow run" the stage's run on the
MLflow tracking server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from e2e.campaigns import SFT_ONLY

if TYPE_CHECKING:
    from e2e.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]


def open_link(page: Any, name: str) -> Any:
    """Click the task's extra link ``name``: the page it opens, loaded. The UI opens links to
    its own server in the same tab and others in a new one."""
    link = page.get_by_role("link", name=name)
    link.wait_for()
    href = link.get_attribute("href")
    assert href.startswith("http"), href
    if link.get_attribute("target") == "_blank":
        with page.context.expect_page() as opened:
            link.click()
        tab = opened.value
    else:
        with page.expect_navigation():
            link.click()
        tab = page
    tab.wait_for_load_state()
    return tab


def test_job_console_and_mlflow_run_links_open_their_pages(stack: Stack, browser_page: Any) -> None:
    campaign = stack.write_campaign("e2e-links", stages=SFT_ONLY)
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.95})
    stack.wait_for_dag(campaign.dag_id)
    dag_id = campaign.dag_id
    run_id = stack.client.trigger(dag_id, {})["dag_run_id"]
    stack.wait_for_run(dag_id, run_id)
    assert stack.task_states(dag_id, run_id)["finish"] == "success"
    (job,) = campaign.jobs(round="1", stage="sft")

    page = browser_page
    task_page = f"/dags/{dag_id}/runs/{run_id}/tasks/train_sft/details"  # where extra links are
    page.goto(task_page)
    console = open_link(page, "Job console")
    assert console.url.startswith(f"{stack.api_url}/tuneloop/jobs/{job.name}")
    console.get_by_text("SUCCEEDED").first.wait_for()
    console.get_by_text("manifest.json").first.wait_for()

    page.goto(task_page)
    mlflow = open_link(page, "MLflow run")
    # The API server's page found the stage's run and sent the browser to the MLflow server.
    mlflow.wait_for_url(f"{stack.mlflow.url}/**")
    assert "/#/experiments/" in mlflow.url and "/runs/" in mlflow.url
