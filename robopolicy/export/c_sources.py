"""The C templates of the C export: real ``.c``/``.h``/``.ld`` files under ``c_templates/`` (package data), each
compilable and lintable on its own, inlined by the code generator into the self-contained exported sources."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

TEMPLATE_DIR = "c_templates"


class CExportError(ValueError):
    """The policy or its weights cannot be exported to C, or the exported C does not build."""


@cache
def template(name: str) -> str:
    """The text of ``c_templates/<name>``."""
    path = files("robopolicy.export").joinpath(TEMPLATE_DIR, name)
    if not path.is_file():
        raise FileNotFoundError(f"C export template {TEMPLATE_DIR}/{name} is missing from robopolicy.export "
                                f"(package data not installed?)")
    return path.read_text()


def template_names() -> list[str]:
    return sorted(p.name for p in files("robopolicy.export").joinpath(TEMPLATE_DIR).iterdir() if p.is_file())


__all__ = ["CExportError", "TEMPLATE_DIR", "template", "template_names"]
