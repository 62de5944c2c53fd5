"""Moved to :mod:`connman.kgents.coherence` (the D-gent/Brain coherence check).

This path stays for code written before the split; the module object *is* the new
one (same identity: monkeypatching either name patches both)."""

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connman.kgents.coherence import *  # noqa: F403

sys.modules[__name__] = importlib.import_module("connman.kgents.coherence")
