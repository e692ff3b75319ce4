"""The error tree shared by server, agent and CLI.

ApsisError
├── BadInput (ValueError)          malformed request, job file or argument
│   └── ProtocolError              a wire message that does not decode
├── NotFound (LookupError)         unknown job, run, process or agent
├── Conflict                       the operation does not fit the current state
├── AuthError                      missing or wrong signature or token
│   └── Forbidden                  authenticated, but not allowed
└── Unavailable                    the peer is busy, draining or unreachable
"""

from __future__ import annotations


class ApsisError(Exception):
    """Base of every error Apsis raises on purpose."""


class BadInput(ApsisError, ValueError):
    """Input that does not have the expected form."""


class ProtocolError(BadInput):
    """A wire message that does not decode to a known message."""


class NotFound(ApsisError, LookupError):
    """Something named does not exist."""


class Conflict(ApsisError):
    """The operation is not allowed in the current state."""


class AuthError(ApsisError):
    """The request is not authenticated."""


class Forbidden(AuthError):
    """The request is authenticated but not allowed."""


class Unavailable(ApsisError):
    """The peer cannot take the request now; try again later."""
