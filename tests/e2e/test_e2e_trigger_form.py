"""The trigger form in the Airflow UI, in a real (headless) browser: Debian's Chromium driven by
Playwright, logged in as a user would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

INVALID = '[data-invalid], [aria-invalid="true"]'
"""Where the form marks a field in error (the section's error badge goes with it)."""


def open_trigger_form(page: Any, dag_id: str) -> Any:
    """Open /dags/<dag_id>, click Trigger; the dialog once its Params are shown."""
    page.goto(f"/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").first.wait_for()
    dialog.get_by_role("checkbox", name="Dry run").wait_for(state="attached")
    return dialog


def test_trigger_form_starts_a_dry_run(stack: Stack, browser_page: Any) -> None:
    """On its defaults the form has no error and its Trigger button is enabled (every optional
    Param may stay empty); with "Dry run" switched on it starts a dry run that succeeds."""
    campaign = stack.write_campaign("e2e-form")
    dag_id = campaign.dag_id
    stack.wait_for_dag(dag_id)
    page = browser_page

    dialog = open_trigger_form(page, dag_id)
    trigger = dialog.get_by_role("button", name="Trigger", exact=True)
    assert dialog.locator(INVALID).count() == 0
    assert dialog.get_by_text("This field is required").count() == 0
    assert trigger.is_enabled()

    dry_run = dialog.get_by_role("checkbox", name="Dry run")
    # The switch's input is visually hidden; a user clicks the switch itself.
    dialog.locator('label[data-scope="switch"]:has(input[name="element_dry_run"])').click()
    assert dry_run.is_checked()
    before = {r["dag_run_id"] for r in stack.client.dag_runs(dag_id)}
    trigger.click()
    # The toast may be rendered twice while it animates in: either one is the confirmation.
    page.get_by_text("Dag Run Triggered").first.wait_for()

    def new_run() -> dict[str, Any] | None:
        runs = [r for r in stack.client.dag_runs(dag_id) if r["dag_run_id"] not in before]
        return runs[0] if runs else None

    run = stack.client.wait_for(new_run, timeout=60, what=f"the run the form started on {dag_id}")
    assert run["conf"].get("dry_run") is True
    stack.wait_for_run(dag_id, run["dag_run_id"])
    assert stack.task_states(dag_id, run["dag_run_id"])["train_sft"] == "skipped"
    assert campaign.jobs() == []

    # The checks above can see an error: broken JSON in "Data overrides" is one, and it
    # disables the button.
    dialog = open_trigger_form(page, dag_id)
    editor = dialog.locator("#element_data_overrides")
    editor.click()
    page.keyboard.press("End")
    page.keyboard.insert_text("x")
    dialog.locator(INVALID).first.wait_for()
    assert dialog.get_by_role("button", name="Trigger", exact=True).is_disabled()
