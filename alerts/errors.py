"""Errors raised by the ``alerts`` package.

``alerts`` cannot import the application's exception tree (``warning.errors``), so it has
its own small one. The CLI treats ``AlertsError`` like the application's own errors:
it prints the message without a traceback and exits non-zero.
"""

from __future__ import annotations


class AlertsError(Exception):
    """Base of every error the ``alerts`` package raises on purpose."""


class DeliveryError(AlertsError):
    """A message could not be handed to a delivery channel.

    Parameters
    ----------
    message : str
        What went wrong, with any phone number already masked.
    permanent : bool
        True when retrying the same message can never succeed (invalid number,
        recipient opted out, landline, ...). The outbox marks the message failed and
        stops; when False it retries later with backoff.
    code : int, optional
        The provider's error code (e.g. Twilio 21610), when there is one.
    """

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code

    def __repr__(self) -> str:
        return f"DeliveryError({str(self)!r}, permanent={self.permanent}, code={self.code})"


class TemplateError(AlertsError):
    """A message template is missing, broken, or was given an incomplete context."""


class CapError(AlertsError, ValueError):
    """A CAP message breaks a rule of CAP 1.2 (or one the XSD cannot check).

    Also a ``ValueError``, because it is raised for bad input values.
    """
