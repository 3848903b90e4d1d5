"""MLflow tracking URIs never carry credentials: one rule for every field that holds one.

A campaign's ``backend.mlflow_uri`` and a recipe's ``run.mlflow_tracking_uri`` are copied into
rendered recipes, ledger records, XCom, task logs and MLflow params. A URI with user info
(``https://user:password@host``) is refused where it is written, rather than stripped: the file
that holds it (a campaign every round snapshots, a recipe in git) would still hold the secret.
Errors show the URI with its password as ``***``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# URI schemes that name a place on this machine: an "@" in them is part of a path.
_LOCAL_SCHEMES = frozenset({"file", "sqlite"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
CREDENTIALS_FIX = (
    "remove them from the URI and give them to the Airflow workers as "
    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the environment, or in an HTTP "
    "Airflow connection (login and password) named by backend.mlflow_conn_id"
)
DATABASE_CREDENTIALS_FIX = (
    "remove them from the URI and give them to the database client in the workers' "
    "environment (PostgreSQL: PGUSER / PGPASSWORD), or track to an MLflow server instead"
)


def uri_user_info(uri: str) -> str | None:
    """The user info (``user:password``) a network URI carries before an "@", or None.

    Every "@" after the scheme counts, not only one a URL parser would put in the host part:
    a password may hold "/", "?" or "#" (where a parser stops), and a secret read as a path
    would still be copied wherever the URI goes."""
    text = uri.strip()
    scheme = _SCHEME.match(text)
    if scheme is None or scheme[1].lower() in _LOCAL_SCHEMES:
        return None
    rest = text[scheme.end() :]
    return rest.rpartition("@")[0] if "@" in rest else None


def redacted_uri(uri: str) -> str:
    """``uri`` with its password (or a lone user name, which may be a token) as ``***``:
    ``https://user:***@host``."""
    text = uri.strip()
    scheme = _SCHEME.match(text)
    if scheme is None or uri_user_info(text) is None:
        return text
    user_info, _, host = text[scheme.end() :].rpartition("@")
    user, colon, _ = user_info.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{text[: scheme.end()]}{shown}@{host}"


def credentials_fix(uri: str) -> str:
    """Where the credentials of ``uri`` go instead: MLflow's for a tracking server, the
    database client's for a database store."""
    scheme = uri.strip().partition("://")[0].lower()
    return CREDENTIALS_FIX if scheme in ("http", "https") else DATABASE_CREDENTIALS_FIX


def _without_credentials(uri: str) -> str:
    """A pydantic after-validator: refuse a URI that carries credentials, shown redacted."""
    if uri_user_info(uri) is None:
        return uri
    raise PydanticCustomError(
        "uri_credentials",
        "{uri} carries credentials, which tuneloop never stores; fix: {fix}",
        {"uri": repr(redacted_uri(uri)), "fix": credentials_fix(uri)},
    )


TrackingUri = Annotated[str, AfterValidator(_without_credentials)]
"""An MLflow tracking URI (a server, a store, a managed MLflow ARN) without user info."""
