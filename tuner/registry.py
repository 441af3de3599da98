"""Packages whose modules register themselves: the setting kinds (tuner/settings/) and
the application adapters (tuner/apps/).  Adding one is adding a module that defines the
package's attribute (KIND, ADAPTER); nothing else lists it."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Iterable


def instances(package: str, path: Iterable[str], attr: str, cls: type) -> Dict[str, object]:
    """{instance.name: instance} of `attr` in every module of `package` (at `path`, its
    __path__) but base, where it is a `cls`; in module-name order."""
    found = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        value = getattr(module, attr, None)
        if isinstance(value, cls):
            found[value.name] = value
    return found
