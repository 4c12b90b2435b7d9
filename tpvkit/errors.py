"""The one exception type users see: its message names the file or key at fault and the fix."""

from __future__ import annotations


class TpvkitError(Exception):
    """Bad input or state that the user can correct; the CLI prints it and exits non-zero."""
