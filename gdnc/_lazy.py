"""Package attributes imported on first use (PEP 562), so that importing a package costs only what
its caller touches: ``import gdnc`` does not load sympy, jinja2 or the kernel compiler, and
``import gdnc.ir`` does not load torch."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for ``package``: attribute ``name`` is ``exports[name]``'s attribute of
    the same name or, where that module has none, the module itself (a submodule: gdnc.reference)."""

    def __getattr__(name: str):
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        target = importlib.import_module(module)
        return getattr(target, name, target)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
