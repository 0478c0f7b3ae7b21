"""The upload errors: what the uploader retries, what it gives up on, and a job that failed."""

from __future__ import annotations


class PermanentError(Exception):
    """This file can never load as it is: it goes to failed/ with the reason."""


class TransientError(Exception):
    """Not now: the file stays queued and is retried after a backoff."""


class AccessDenied(TransientError):
    """A 403 that is no rate limit: a role is missing. The credentials' fault, never a file's."""


class JobFailed(Exception):
    """The load job ran and failed: it loaded nothing, and its id cannot be used again."""

    def __init__(self, job_id: str, cause: Exception) -> None:
        super().__init__(f"load job {job_id} failed: {cause}")
        self.job_id = job_id
        self.cause = cause  # TransientError or PermanentError


class StaleJobId(Exception):
    """A job with this id failed before (an earlier attempt): the next attempt needs a new id."""
