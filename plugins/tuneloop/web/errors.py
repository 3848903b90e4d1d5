"""Why a page refuses a request. ``tuneloop.web.app`` turns each into its HTTP answer, once.

A request names a job, a folder, a DAG or a run, not a file and line: the text of these errors is
the sentence the page shows, with no location in front of it.
"""

from __future__ import annotations

from tuneloop.errors import MessageError


class WebError(MessageError):
    """A request the pages do not answer; ``str()`` is the message the page shows."""


class NotLoggedInError(WebError):
    """No valid Airflow session or token on the request; a browser is sent to ``login_url``."""

    def __init__(self, message: str, login_url: str) -> None:
        super().__init__(message)
        self.login_url = login_url


class ForbiddenError(WebError):
    """The user may not read that DAG's task instances or logs."""


class AccessRefusedError(WebError):
    """A path outside the local roots, or not a plain name where a name belongs."""


class JobMissingError(WebError):
    """No job of that name in that folder."""


class RunsUnavailableError(WebError):
    """The campaign's MLflow store could not be read (the message says why, without secrets)."""
