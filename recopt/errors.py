"""The base of every error a user can cause (bad data, bad config, stale artifacts).

Stage entry points print such an error as one clean message and exit non-zero;
anything else is a bug and keeps its traceback. ``RECOPT_DEBUG=1`` shows the
traceback of user errors too.
"""

from __future__ import annotations


class RecoptError(Exception):
    """An error the user can fix; its message names the file or key and the fix."""


class ArtifactError(RecoptError):
    """An input artifact that cannot be trusted, or an output that cannot be written."""
