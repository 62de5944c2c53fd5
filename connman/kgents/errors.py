"""D-gent's errors: what the append-only store refuses.

Both derive from :class:`connman.errors.AdapterError` (so from
:class:`connman.errors.ConnmanError`); ``connman.DatumConflict`` and
``connman.errors.DatumConflict`` are these same classes.
"""

from __future__ import annotations

from connman.errors import AdapterError

__all__ = ["CausalParentMissing", "DatumConflict"]


class DatumConflict(AdapterError):
    """``put`` of a datum whose id exists with other content: D-gent data is
    append-only. The same content again is a no-op, never this error."""


class CausalParentMissing(AdapterError, LookupError):
    """``put`` of a datum whose ``causal_parent`` does not exist. Also a ``LookupError``."""
