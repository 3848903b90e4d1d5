"""The modules of the tuneloop package, for the tests that walk all of it."""

from __future__ import annotations

from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def package_modules() -> list[str]:
    """Every module's dotted name, but the ``__main__`` ones (importing one runs a command)."""
    names = []
    for path in sorted((PLUGINS / "tuneloop").rglob("*.py")):
        if path.stem != "__main__":
            parts = path.relative_to(PLUGINS).with_suffix("").parts
            names.append(".".join(parts).removesuffix(".__init__"))
    return names
