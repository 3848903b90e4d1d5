"""Every AWS client tuneloop makes comes from `client`: one credential path, one client per process.

**Whose credentials.** Inside Airflow, the Airflow connection: the one a job backend names
(``aws_conn_id`` of the campaign's backend), else the process's connection (`use_connection`,
``aws_default`` until a task names the campaign's). The Amazon provider's ``AwsGenericHook``
reads it, so its role, profile, region, endpoint_url, botocore config and verify settings all
apply, and a connection that does not exist falls back to boto3's default chain with a warning
in the task log, as the provider's own operators do. Outside Airflow (the CLI, ``make demo``,
tests, and the API server, which runs no task) the connection is not read: boto3's default
credential chain (environment, profile, instance or container role).

**Inside Airflow** means: this process runs Airflow task or trigger code. The Task SDK marks
such a process by setting ``task_runner.SUPERVISOR_COMMS`` (a worker's task runner, the
triggerer's trigger runner, ``dag.test()``), which is what Airflow itself checks before it asks
for a connection (``supervisor.set_supervisor_comms``). ``AIRFLOW_CTX_DAG_ID``, which the task
runner exports, is not enough: the triggerer, where a deferred job is watched, never sets it,
and a job process a task starts inherits it without being able to reach Airflow.

**Endpoints**, first that is set: the caller's ``endpoint_url``; for S3, the environment's
``TUNELOOP_S3_ENDPOINT_URL`` (an S3-compatible store, the tests' moto server); the connection's;
boto3's own (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>``).

**Cached.** A client is made once per process for the same service, region, connection,
endpoint and settings (and the ``AWS_*`` settings boto3 read when it was made): boto3 clients are
thread-safe, making one is not (and loads the service model, tens of milliseconds). `clear`
drops them.

Credentials stay inside boto3 and the hook: nothing here logs, returns or stores them, and in
task processes the environment's secret key and session token are registered with Airflow's
secrets masker (`mask_environment_secrets`). boto3 and the provider are imported on first use,
so modules a DAG file imports may import this one.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

DEFAULT_CONN_ID = "aws_default"
S3_ENDPOINT_ENV = "TUNELOOP_S3_ENDPOINT_URL"


class _Current(enum.Enum):
    CONNECTION = "the process's connection"


CURRENT = _Current.CONNECTION
"""``conn_id`` default of `client`: the connection `use_connection` set for this process."""

# The AWS_* settings boto3 reads when it makes a client. A client made before one of them
# changed (a test that points boto3 elsewhere, a CLI run with another profile) is not reused.
# Secret keys are not among them: the access key id is an identifier, not a secret.
_BOTO_SETTINGS = (
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)

_lock = threading.Lock()
_connection: str | None = DEFAULT_CONN_ID
_clients: dict[tuple[Any, ...], Any] = {}
_sessions: dict[tuple[Any, ...], Any] = {}


def use_connection(conn_id: str | None) -> None:
    """Make ``conn_id`` the connection this process's clients use when their caller names none
    (storage reading a campaign's output root). None: boto3's default chain, in Airflow too."""
    global _connection
    _connection = conn_id


def connection_id() -> str | None:
    """The connection `use_connection` set (``aws_default`` until then)."""
    return _connection


def in_airflow() -> bool:
    """True in a process that runs Airflow task or trigger code (see the module docstring)."""
    # Looked up, never imported: a process that has not loaded the Task SDK runs no task.
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(runner, "SUPERVISOR_COMMS", None) is not None


# The AWS secrets boto3 reads from the environment (AWS_SECURITY_TOKEN: the older name of the
# session token, still read by some SDKs). The access key id is an identifier, not a secret.
SECRET_ENVIRONMENT = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def mask_environment_secrets() -> None:
    """Register the AWS secrets of this process's environment with Airflow's secrets masker,
    so a task log line that quotes one (a botocore debug line, an error that echoes a request)
    shows ``***``. Airflow masks a connection's secrets when it reads the connection; the
    environment's are never read through it.

    Nothing to do in a process that has not loaded Airflow (the command line, a job process):
    it has no masker and no task log. Both maskers, as for the MLflow password: the Task SDK's
    filters task logs, Airflow core's the API server's own lines."""
    if "airflow" not in sys.modules:
        return
    secrets = [value for name in SECRET_ENVIRONMENT if (value := os.environ.get(name))]
    if not secrets:
        return
    try:
        from airflow.sdk.log import mask_secret

        core = sys.modules.get("airflow._shared.secrets_masker")
        for secret in secrets:
            mask_secret(secret)
            if core is not None:
                core.mask_secret(secret)
    except Exception as error:  # a logging setup without a masker: say so, never the secret
        logging.getLogger(__name__).warning(
            "Could not register the AWS secrets of the environment with Airflow's masker: %s",
            error,
        )


def client(
    service: str,
    region: str | None = None,
    *,
    conn_id: str | _Current | None = CURRENT,
    endpoint_url: str | None = None,
    config: Mapping[str, Any] | None = None,
    verify: bool | str | None = None,
) -> Any:
    """A boto3 client for ``service`` in ``region`` (None: the connection's or boto3's).

    ``conn_id`` is the Airflow connection to use inside Airflow (None: the default chain there
    too); ``config`` holds botocore Config arguments (retries, timeouts); ``verify`` is boto3's
    (False, or a CA bundle path). Made once per process for the same arguments.
    """
    connection = _connection_for(conn_id)
    endpoint = endpoint_url or _endpoint_override(service)
    settings = json.dumps(dict(config or {}), sort_keys=True, default=str)
    key = (service, region, connection, endpoint, settings, verify, _boto_settings())
    with _lock:
        made = _clients.get(key)
        if made is None:
            if connection is None:
                made = _default_chain_client(service, region, endpoint, config, verify)
            else:
                made = _connection_client(service, region, connection, endpoint, config, verify)
            _clients[key] = made
        return made


def session(region: str | None = None, *, conn_id: str | _Current | None = CURRENT) -> Any:
    """A boto3 Session with the credentials `client` would use, for code that needs a session
    rather than a client (an EKS token presigned from them). Made once per process."""
    connection = _connection_for(conn_id)
    key = (region, connection, _boto_settings())
    with _lock:
        made = _sessions.get(key)
        if made is None:
            if connection is None:
                import boto3

                made = boto3.session.Session(region_name=region)
            else:
                hook = _hook(connection, region, None, None)
                made = hook.get_session(region_name=hook.region_name)
            _sessions[key] = made
        return made


def clear() -> None:
    """Forget every client and session made so far (the next call makes new ones)."""
    with _lock:
        _clients.clear()
        _sessions.clear()


def _connection_for(conn_id: str | _Current | None) -> str | None:
    """The connection to read, or None for the default chain (always, outside Airflow)."""
    if not in_airflow():
        return None
    return _connection if isinstance(conn_id, _Current) else conn_id


def _endpoint_override(service: str) -> str | None:
    return (os.environ.get(S3_ENDPOINT_ENV) or None) if service == "s3" else None


def _boto_settings() -> tuple[tuple[str, str], ...]:
    """The values of the AWS_* settings boto3 reads as it makes a client (endpoint variables
    included: their service part is boto3's long service id, CLOUDWATCH_LOGS for logs)."""
    return tuple(
        (name, value)
        for name, value in sorted(os.environ.items())
        if name in _BOTO_SETTINGS or name.startswith("AWS_ENDPOINT_URL")
    )


def _default_chain_client(
    service: str,
    region: str | None,
    endpoint: str | None,
    config: Mapping[str, Any] | None,
    verify: bool | str | None,
) -> Any:
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's shared default session is not safe to use from several
    # threads, and this one is only used under the lock.
    return boto3.session.Session(region_name=region).client(
        service,
        endpoint_url=endpoint,
        config=Config(**config) if config else None,
        verify=verify,
    )


def _connection_client(
    service: str,
    region: str | None,
    conn_id: str,
    endpoint: str | None,
    config: Mapping[str, Any] | None,
    verify: bool | str | None,
) -> Any:
    hook = _hook(conn_id, region, config, verify)
    endpoint = endpoint or hook.conn_config.get_service_endpoint_url(service_name=service)
    return hook.get_session(region_name=hook.region_name).client(
        service, endpoint_url=endpoint, config=hook.config, verify=hook.verify
    )


def _hook(
    conn_id: str,
    region: str | None,
    config: Mapping[str, Any] | None,
    verify: bool | str | None,
) -> Any:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

    return AwsGenericHook(
        aws_conn_id=conn_id,
        region_name=region,
        verify=verify,
        config=dict(config) if config else None,
    )
