"""SageMaker managed MLflow through the ``sagemaker-mlflow`` plugin, for its ARNs only.

``sagemaker-mlflow`` registers itself with MLflow through entry points: a tracking store and a
model registry store for the ``arn`` scheme (their requests carry ``auth="arn"``), the ``arn``
request auth provider (SigV4 signing with the worker's AWS credentials) and a request header
provider. Both providers read the ARN from MLflow's process-wide tracking URI, not from the
client that makes the request, and the header provider says it applies to every request: with
any other tracking URI it fails to parse that URI as an ARN, and MLflow logs a warning for every
request to a tracking server.

`tracking_to` fixes both for the calls made inside it: the providers read the URI given there
(MLflow's own tracking URI when no call is under way), and the header provider applies only
when that URI is a SageMaker MLflow ARN. The plugin's code is otherwise left as it is.

Nothing is imported at module level: DAG files import the tracking package at parse time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Iterator
from contextvars import ContextVar

ARN = re.compile(
    r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:(?:mlflow-tracking-server|mlflow-app)/[^\s/]+"
)
"""A SageMaker managed MLflow tracking server or MLflow app."""

_uri_in_call: ContextVar[str | None] = ContextVar("tuneloop_mlflow_uri", default=None)
_installed: bool | None = None


def is_arn(uri: str | None) -> bool:
    return bool(uri) and ARN.fullmatch(str(uri).strip()) is not None


def available() -> bool:
    """Whether the ``sagemaker-mlflow`` package is installed (found, not imported)."""
    return importlib.util.find_spec("sagemaker_mlflow") is not None


@contextlib.contextmanager
def tracking_to(uri: str) -> Iterator[None]:
    """MLflow calls made inside talk to ``uri``: signed for it when it is an ARN, without the
    plugin's header (and its warning) when it is not."""
    install()
    token = _uri_in_call.set(uri)
    try:
        yield
    finally:
        _uri_in_call.reset(token)


def uri_in_play() -> str:
    """The tracking URI of the call under way, else MLflow's process-wide one."""
    uri = _uri_in_call.get()
    if uri is not None:
        return uri
    import mlflow

    return str(mlflow.get_tracking_uri())


def install() -> bool:
    """Point the plugin's providers at `uri_in_play`, once per process; False when the plugin
    is not installed (then there is nothing to fix)."""
    global _installed
    if _installed is not None:
        return _installed
    if not available():
        _installed = False
        return False
    # The package ships no type information.
    from sagemaker_mlflow import (  # type: ignore[import-untyped]
        auth_provider,
    )
    from sagemaker_mlflow import (
        mlflow_sagemaker_request_header_provider as header_provider,
    )

    # Both modules call the ``get_tracking_uri`` they imported from mlflow: the name is theirs.
    auth_provider.get_tracking_uri = uri_in_play
    header_provider.get_tracking_uri = uri_in_play
    provider = header_provider.MlflowSageMakerRequestHeaderProvider
    provider.in_context = _header_applies
    _installed = True
    return True


def _header_applies(_provider: object) -> bool:
    return is_arn(uri_in_play())
