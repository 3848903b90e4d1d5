"""MLflow credentials: from an Airflow connection or the environment, never from a URI, and held
only in the memory of the process that talks to MLflow.

A campaign's ``backend.mlflow_uri`` never carries credentials (`tuneloop.config.campaign`
refuses one that does), so nothing that copies the URI (recipes, ledger records, XCom, logs,
reports, MLflow params) can copy a secret. The credentials come from

- the Airflow connection named by ``backend.mlflow_conn_id`` (HTTP type: its login and
  password), read when MLflow is called and put in this process's environment for the length
  of the call only: MLflow's client reads ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD`` from the environment before every request (artifact uploads
  included), and there is no public way to hand them to one client. What the variables held
  before comes back afterwards;
- else the environment, as MLflow itself reads it.

Either way the password (and ``MLFLOW_TRACKING_TOKEN``) is registered with Airflow's secrets
masker, so a task log line that quotes it shows ``***``.

One lock per process guards the variables: the API server reads MLflow from a thread pool, and
a call for one campaign must never go out with the credentials of another.

airflow is imported inside functions, and only in a process that already loaded it: the
command line never needs it here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tuneloop.errors import CampaignError, MessageError

if TYPE_CHECKING:
    from tuneloop.config.file import CampaignFile

log = logging.getLogger(__name__)

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
FIELD = ("backend", "mlflow_conn_id")

_lock = threading.RLock()


class CredentialsError(MessageError):
    """The Airflow connection a campaign names for MLflow is missing or holds no credentials."""

    def __init__(self, conn_id: str, what: str) -> None:
        self.what = what
        self.fix = (
            f"create an HTTP connection {conn_id!r} whose login and password are the MLflow "
            f"server's user and password (Admin > Connections, or AIRFLOW_CONN_{conn_id.upper()})"
        )
        super().__init__(f"{'.'.join(FIELD)}: {what}; fix: {self.fix}")


def mask(secret: str | None) -> None:
    """Register ``secret`` with Airflow's secrets masker, when this process runs Airflow code.

    Both maskers: the Task SDK's filters task logs (and tells the task's supervisor), Airflow
    core's filters the API server's own log lines."""
    if not secret or "airflow" not in sys.modules:
        return
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
        core = sys.modules.get("airflow._shared.secrets_masker")
        if core is not None:
            core.mask_secret(secret)
    except Exception as error:  # a logging setup without a masker: say so, never the secret
        log.warning("Could not register an MLflow secret with Airflow's masker: %s", error)


def mask_environment() -> None:
    """Mask the MLflow password and token this process has in its environment."""
    for name in (PASSWORD_ENV, TOKEN_ENV):
        mask(os.environ.get(name))


def connection_credentials(conn_id: str) -> tuple[str, str]:
    """(login, password) of the Airflow connection ``conn_id``, the password masked."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        what = f"the Airflow connection {conn_id!r} does not exist"
        raise CredentialsError(conn_id, what) from None
    login, password = connection.login or "", connection.password or ""
    mask(password)
    if not login or not password:
        what = f"the Airflow connection {conn_id!r} has no login or no password"
        raise CredentialsError(conn_id, what)
    return login, password


def check_connection(cf: CampaignFile) -> None:
    """Fail before spending: the connection the campaign names for MLflow exists and has a
    login and a password (nothing to check when it names none)."""
    conn_id = cf.campaign.backend.mlflow_conn_id
    if not conn_id:
        return
    try:
        connection_credentials(conn_id)
    except CredentialsError as error:
        raise CampaignError([cf.problem(FIELD, error.what, fix=error.fix)]) from None


@contextmanager
def mlflow_credentials(conn_id: str = "") -> Iterator[None]:
    """MLflow calls made inside authenticate with connection ``conn_id`` (empty: with the
    environment's credentials, as MLflow reads them). The environment is as it was after."""
    with _lock:
        mask_environment()
        if not conn_id:
            yield
            return
        login, password = connection_credentials(conn_id)
        saved = {name: os.environ.get(name) for name in (USERNAME_ENV, PASSWORD_ENV)}
        os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV] = login, password
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
