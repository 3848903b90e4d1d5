"""The FastAPI app the plugin mounts on Airflow's API server at ``/tuneloop``.

Routes (relative to the mount point; every one also answers ``format=json``):

- ``GET /jobs/{name}?root=&lines=``: a local job's page;
- ``GET /mlflow?dag_id=&run_id=&task_id=``: the task's MLflow run: a redirect to the MLflow
  server's UI, the run rendered here (local or database store), or a page saying the round is
  not decided yet; without ``run_id``, the campaign's experiment;
- ``GET /mlflow/runs/{run_id}?dag_id=``: one run of the campaign's local store.

Access: the caller is Airflow's logged-in user (the UI's session cookie, or a Bearer token), and
needs read access to the DAG: task logs for a job page (the DAG named by the job's labels),
task instances for MLflow. A browser without a session is sent to Airflow's login page.
Blocking work (files, MLflow, Airflow's database) runs in the thread pool.

Endpoints raise the refusals of ``tuneloop.web.errors``; one exception handler turns each into
its answer (status, page or JSON), so no endpoint repeats that mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneloop.web import pages
from tuneloop.web.errors import (
    AccessRefusedError,
    ForbiddenError,
    JobMissingError,
    NotLoggedInError,
    RunsUnavailableError,
    WebError,
)
from tuneloop.web.jobs import DEFAULT_LINES, clamp_lines, job_view
from tuneloop.web.roots import Roots, local_roots

TASK_LOGS = "TASK_LOGS"
TASK_INSTANCE = "TASK_INSTANCE"
DAG_LABEL = "dag_id"
CAMPAIGN_LABEL = "campaign"


@dataclass
class Access:
    """Checks a request against Airflow's auth manager."""

    request: Request

    async def user(self) -> Any:
        """The Airflow user of the request (NotLoggedInError without a valid session or
        token)."""
        from airflow.api_fastapi.core_api.security import get_user
        from fastapi import HTTPException
        from fastapi.security import HTTPBearer

        credentials = await HTTPBearer(auto_error=False)(self.request)
        try:
            return await get_user(
                request=self.request, _oauth_token=None, bearer_credentials=credentials
            )
        except HTTPException as error:
            raise NotLoggedInError(str(error.detail), self.login_url()) from None

    async def require(self, user: Any, dag_id: str | None, entity: str) -> None:
        """ForbiddenError unless ``user`` may read ``entity`` of ``dag_id`` (of every DAG:
        None)."""
        allowed = await run_in_threadpool(_is_authorized, user, dag_id, entity)
        if not allowed:
            raise ForbiddenError(
                f"no read access to {entity.lower().replace('_', ' ')} of {dag_id}"
            )

    def login_url(self) -> str:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=str(self.request.url))


def _is_authorized(user: Any, dag_id: str | None, entity: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.models.dag import DagModel

    details = None
    if dag_id:
        details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity[entity], details=details, user=user
    )


def access(request: Request) -> Access:
    """The access checker of a request (a dependency, so that it can be replaced)."""
    return Access(request)


AccessDep = Annotated[Access, Depends(access)]

app = FastAPI(
    title="tuneloop",
    description="Pages behind the extra links of tuneloop's job tasks.",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


# -- refusals -------------------------------------------------------------------------------------

ROOTS_ADVICE = (
    "This server shows files inside its local roots only: add the folder to [tuneloop] "
    "local_roots (AIRFLOW__TUNELOOP__LOCAL_ROOTS) of the API server."
)
REFUSALS: dict[type[Exception], tuple[int, str]] = {
    ForbiddenError: (403, "Not allowed"),
    AccessRefusedError: (403, "Not shown"),
    JobMissingError: (404, "No such job"),
    RunsUnavailableError: (502, "MLflow could not be read"),
}
"""Each refusal's HTTP status and page title (NotLoggedInError: a 401, or the login page)."""


@app.exception_handler(WebError)
async def _refuse(request: Request, error: Exception) -> Response:
    """The answer to a request an endpoint refused, in the format the request asked for."""
    as_json = _wants_json(request.query_params.get("format"))
    if isinstance(error, NotLoggedInError):
        if as_json:
            return JSONResponse({"error": f"not logged in: {error}"}, status_code=401)
        return RedirectResponse(error.login_url, status_code=303)
    status, title = REFUSALS.get(type(error), (500, "Error"))
    message = str(error)
    if isinstance(error, AccessRefusedError):
        message = f"{message}. {ROOTS_ADVICE}"
    return _problem(request, as_json, status, title, message)


async def _reader(checker: Access, dag_id: str, entity: str) -> Any:
    """The user of the request, who may read ``entity`` of ``dag_id``."""
    user = await checker.user()
    await checker.require(user, dag_id, entity)
    return user


# -- helpers --------------------------------------------------------------------------------------


def _wants_json(format: str | None) -> bool:
    return (format or "").lower() == "json"


def _airflow_home(request: Request) -> str:
    """The Airflow UI: the mount point's parent."""
    return str(request.base_url).rstrip("/").removesuffix("/tuneloop") + "/"


def _problem(request: Request, as_json: bool, status: int, title: str, message: str) -> Response:
    if as_json:
        return JSONResponse({"error": message}, status_code=status)
    body = pages.message_body(title, message)
    return HTMLResponse(pages.page(title, body, home=_airflow_home(request)), status_code=status)


def _run_url(request: Request, dag_id: str) -> Any:
    def url(run_id: str) -> str:
        return f"{request.url_for('mlflow_run', run_id=run_id)}?{urlencode({'dag_id': dag_id})}"

    return url


# -- jobs -----------------------------------------------------------------------------------------


@app.get("/jobs/{name}", name="job_page", response_model=None)
async def job_page(
    request: Request,
    checker: AccessDep,
    name: str,
    root: str = Query("", description="the jobs folder (an absolute path)"),
    lines: int = Query(DEFAULT_LINES, description="log lines to show (at most 5000)"),
    format: str | None = Query(None, description="json for JSON"),
) -> Response:
    user = await checker.user()  # the DAG to check is in the job's labels
    roots = Roots(await run_in_threadpool(local_roots))
    view = await run_in_threadpool(job_view, roots, root, name, clamp_lines(lines))
    labels = view["labels"]
    dag_id = labels.get(DAG_LABEL) or (
        campaign_dag_id(labels[CAMPAIGN_LABEL]) if labels.get(CAMPAIGN_LABEL) else None
    )
    await checker.require(user, dag_id, TASK_LOGS)
    if _wants_json(format):
        return JSONResponse(view)
    refresh = f"{request.url_for('job_page', name=name)}?{urlencode({'root': view['root']})}"
    if lines != DEFAULT_LINES:
        refresh += f"&lines={clamp_lines(lines)}"
    return HTMLResponse(
        pages.job_page(view, refresh_url=refresh, home=_airflow_home(request)),
        headers={"Cache-Control": "no-store"},
    )


def campaign_dag_id(campaign: str) -> str:
    """The round DAG of a campaign (``Campaign.dag_id``)."""
    return f"tuneloop_{campaign.replace('-', '_')}"


# -- MLflow ---------------------------------------------------------------------------------------


@app.get("/mlflow", name="mlflow_link", response_model=None)
async def mlflow_link(
    request: Request,
    checker: AccessDep,
    dag_id: str = Query(..., description="the DAG of the task"),
    run_id: str = Query("", description="the DAG run; empty: the campaign's experiment"),
    task_id: str = Query("", description="the task"),
    map_index: int = Query(-1),
    format: str | None = Query(None, description="json for JSON"),
) -> Response:
    from tuneloop.web.runs import resolve_task_run

    as_json = _wants_json(format)
    await _reader(checker, dag_id, TASK_INSTANCE)
    if not run_id:
        return await _experiment(request, dag_id, as_json)
    found = await run_in_threadpool(resolve_task_run, dag_id, run_id, task_id)
    if not found["experiment_url"] and found["campaign"] and found["status"] != "error":
        found["experiment_url"] = f"{request.url_for('mlflow_link')}?" + urlencode(
            {"dag_id": dag_id}
        )
    if as_json:
        return JSONResponse(found)
    if found["status"] == "redirect":
        return RedirectResponse(found["redirect"], status_code=307)
    home = _airflow_home(request)
    if found["status"] == "found":
        body = pages.run_body(found["run"], run_url=_run_url(request, dag_id))
        if found["note"]:
            body = f"<p class=note>{pages.text(found['note'])}</p>" + body
        body += f"<p class=muted>{pages.text(found['message'])}</p>"
        experiment = found["experiment_url"]
        body += f"<p>{pages.link(experiment, 'All rounds of the campaign')}</p>"
        return HTMLResponse(pages.page("MLflow run", body, home=home))
    titles = {
        "pending": "Not in MLflow yet",
        "not_campaign": "No MLflow run",
        "off": "MLflow is off",
        "error": "MLflow could not be read",
    }
    task_page = f"{home}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}" + (
        f"/tasks/{quote(task_id, safe='')}" if task_id else ""
    )
    links = [
        (found["experiment_url"], "The campaign's experiment"),
        (task_page, "Back to the task in Airflow"),
    ]
    body = pages.message_body(titles.get(found["status"], "MLflow"), found["message"], links)
    status = 502 if found["status"] == "error" else 200
    return HTMLResponse(pages.page("MLflow run", body, home=home), status_code=status)


async def _experiment(request: Request, dag_id: str, as_json: bool) -> Response:
    from tuneloop.web.campaigns import campaign_for_dag
    from tuneloop.web.runs import experiment_view

    info = await run_in_threadpool(campaign_for_dag, dag_id)
    if info is None or not info.tracking_uri:
        why = (
            "is not the round DAG of a campaign this server knows"
            if info is None
            else ("belongs to a campaign that does not mirror its rounds to MLflow")
        )
        return _problem(request, as_json, 404, "No experiment", f"DAG {dag_id} {why}.")
    view = await run_in_threadpool(experiment_view, info)
    if as_json:
        return JSONResponse(view)
    if view["server_url"] and view["experiment_id"]:
        return RedirectResponse(view["server_url"], status_code=307)
    home = _airflow_home(request)

    def dag_run_url(run_id: str) -> str:
        return f"{home}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    body = pages.experiment_body(view, run_url=_run_url(request, dag_id), dag_run_url=dag_run_url)
    return HTMLResponse(pages.page("MLflow experiment", body, home=home))


@app.get("/mlflow/runs/{run_id}", name="mlflow_run", response_model=None)
async def mlflow_run(
    request: Request,
    checker: AccessDep,
    run_id: str,
    dag_id: str = Query(..., description="the campaign's round DAG"),
    format: str | None = Query(None, description="json for JSON"),
) -> Response:
    from tuneloop.web.campaigns import campaign_for_dag
    from tuneloop.web.runs import CampaignRuns

    as_json = _wants_json(format)
    await _reader(checker, dag_id, TASK_INSTANCE)
    info = await run_in_threadpool(campaign_for_dag, dag_id)
    if info is None or not info.tracking_uri:
        return _problem(request, as_json, 404, "No such run", f"DAG {dag_id} has no MLflow runs.")

    def read() -> dict[str, Any] | None:
        runs = CampaignRuns(info)
        found = runs.run(run_id)
        return None if found is None else runs.describe(found)

    run = await run_in_threadpool(read)
    if run is None:
        message = f"no run {run_id} of campaign {info.name} in its MLflow store"
        return _problem(request, as_json, 404, "No such run", message)
    if as_json:
        return JSONResponse(run)
    body = pages.run_body(run, run_url=_run_url(request, dag_id))
    experiment = f"{request.url_for('mlflow_link')}?" + urlencode({"dag_id": dag_id})
    body += f"<p>{pages.link(experiment, 'All rounds of the campaign')}</p>"
    return HTMLResponse(pages.page("MLflow run", body, home=_airflow_home(request)))
