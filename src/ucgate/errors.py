"""The one base class of the errors ucgate raises on purpose.

Every refusal, parse error and dependency failure carries ``reason``: a short, stable,
lower-case code (``bad-chunk-size``, ``channel-binding-mismatch``, ``store-unavailable``...) that
goes to the log line, the audit record and the metrics' closed label sets, and ``detail``: text
for a human that never holds a secret or more than a few characters of the input. Code that
answers or logs an error catches :class:`UcgateError` and reads ``reason``, instead of
catching a list of classes and probing for the attribute.

A subclass keeps its own constructor (``HttpError(status, reason, detail)``) and its other
bases (``NtlmError`` is still a ``ValueError`` for the callers that catch that); ``str(e)`` is
what it was. This module imports nothing of ucgate: every layer may use it.
"""

from __future__ import annotations


class UcgateError(Exception):
    """An error with a machine-readable ``reason`` and a human ``detail``."""

    reason: str
    detail: str

    def __init__(self, reason: str, detail: str = "", *, message: str | None = None) -> None:
        if message is None:
            message = f"{reason}: {detail}" if detail else reason
        super().__init__(message)
        self.reason = reason
        self.detail = detail


def reason_of(exc: BaseException, default: str | None = None) -> str:
    """``exc.reason`` for a :class:`UcgateError`, else ``default`` or the class name (an
    unexpected error: its name is what the log can say without its message)."""
    if isinstance(exc, UcgateError):
        return exc.reason
    return default if default is not None else type(exc).__name__
