"""One module per store (or wrapper) the conformance suite runs on.

Each module defines ``BACKENDS``: a dict from a backend name to a function
``(request, tmp_path) -> StoreFactory``. A new adapter joins every suite by adding a module
here; no test is copied. Server backends fail (never skip) when their server is unreachable.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvsessions.testing import StoreFactory

BackendMaker = Callable[[Any, Path], StoreFactory]


def discover() -> dict[str, BackendMaker]:
    found: dict[str, BackendMaker] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        found.update(getattr(module, "BACKENDS", {}))
    return dict(sorted(found.items()))


ALL = discover()
