"""Moved to :mod:`connman.kgents.schema`; this package stays for code written before
the split. Its names are read from ``connman.kgents.schema`` on each access (PEP 562),
and its submodules (``connman.schema.models``...) are the new modules themselves.

(This package cannot simply *be* the new one in ``sys.modules``: Python would then
load ``connman.schema.models`` a second time from the new directory, under the old
name, and SQLAlchemy would see every model declared twice.)
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connman.kgents.schema import *  # noqa: F403

_NEW = "connman.kgents.schema"


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module(_NEW), name)


def __dir__() -> list[str]:
    return dir(importlib.import_module(_NEW))
