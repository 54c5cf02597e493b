"""PEP 562 lazy attributes: a package's names that load their module on first access."""
import importlib
import sys


def lazy_getattr(package: str, table: dict):
    """A module `__getattr__` for `package` resolving each name in `table` (name -> relative module) on first use
    and caching it in the package's namespace."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
