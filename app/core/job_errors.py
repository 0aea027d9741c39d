"""Why a job failed, as a code a client can act on (`Job.error_code`), beside `error`'s text.

`error` says what happened in words and may change; the code is the contract. A job that
gave up after its last attempt keeps the code of that attempt's failure. Jobs the mobile app
runs itself carry no code. The migration `20261201002000_job_error_code.sql` allows exactly
these values; a code added later needs a migration of its own, and the API shows a code it
does not know (written by a newer deploy) as `internal_error`, as clients are told to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

JobErrorCode = Literal[
    "content_refused",
    "invalid_request",
    "unusable_image",
    "provider_unavailable",
    "timed_out",
    "reference_missing",
    "storage_unavailable",
    "worker_lost",
    "internal_error",
]

# What each code means and what the caller can do about it (the API document lists these).
MEANINGS: dict[JobErrorCode, str] = {
    "content_refused": "the model refused or stopped without an image (a safety block, a "
    "recitation, no image for this prompt): another prompt or source image may work",
    "invalid_request": "the provider rejected the request itself: change it",
    "unusable_image": "the model's answer was not an image this service can store",
    "provider_unavailable": "every model was unavailable, rate-limited or failing (a hosted "
    "model's answer that was no image counts as failing): try later",
    "timed_out": "an attempt took longer than its deadline",
    "reference_missing": "the source image was deleted before the job ran",
    "storage_unavailable": "the image store could not be read or written",
    "worker_lost": "the worker running the job stopped responding",
    "internal_error": "an error in this service",
}

CODES: tuple[JobErrorCode, ...] = get_args(JobErrorCode)


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed: the code a client acts on, and the words for a person."""

    code: JobErrorCode
    reason: str


def known(code: str | None) -> JobErrorCode | None:
    """A stored code as this version of the API may show it (see the module's docstring)."""
    if code is None:
        return None
    return next((candidate for candidate in CODES if candidate == code), "internal_error")
