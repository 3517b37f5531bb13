"""An import-linter contract type the built-in ones lack: no private name crosses modules.

``make lint`` runs it (``.importlinter``, ``contract_types``). A name that starts with one
underscore is its module's own business; when another module imports it (``from .stack import
_kill_group``) or reaches for it through a module (``stack_mod._kill_group``), the two modules
share a helper that belongs in a module of its own, with a public name. import-linter's graph
knows which modules import which, not the names, so this contract reads the sources (``ast``).
Built-in contracts cover the rest: ``acyclic_siblings`` (no circles) and ``private_modules``.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck
from importlinter.domain.imports import Module


@dataclass(frozen=True, order=True)
class PrivateUse:
    """``importer`` uses ``name``, private to ``owner``, at line ``line``."""

    importer: str
    owner: str
    name: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.owner}.{self.name} (l.{self.line})"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root_dirs(roots: set[str]) -> dict[str, Path]:
    """Where each root package's sources are (finding a root imports only its __init__)."""
    dirs = {}
    for root in roots:
        spec = importlib.util.find_spec(root)
        if spec is not None and spec.submodule_search_locations:
            dirs[root] = Path(next(iter(spec.submodule_search_locations)))
    return dirs


def source_file(module: str, dirs: dict[str, Path]) -> Path | None:
    root, *rest = module.split(".")
    base = dirs.get(root)
    if base is None:
        return None
    path = base.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module of ``from <level dots><target> import ...`` inside ``importer``."""
    if level == 0:
        return target or ""
    parts = importer.split(".")
    package = parts if is_package else parts[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"] when it is a plain chain of names."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else [*inner, node.attr]
    return None


def private_uses(
    module: str, source: str, is_package: bool, modules: set[str]
) -> Iterator[PrivateUse]:
    """Every private name of another module of ``modules`` that ``module``'s source uses."""
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> the module of ``modules`` it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            owner = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                if f"{owner}.{alias.name}" in modules:  # a module, not a name
                    bound[alias.asname or alias.name] = f"{owner}.{alias.name}"
                elif owner in modules and owner != module and is_private(alias.name):
                    yield PrivateUse(module, owner, alias.name, node.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain = _dotted(node.value)
            if chain is None or chain[0] not in bound:
                continue
            owner = ".".join([bound[chain[0]], *chain[1:]])
            if owner in modules and owner != module:
                yield PrivateUse(module, owner, node.attr, node.lineno)


class PrivateNamesContract(Contract):
    """No module of ``packages`` uses a private name of another module of ``packages``.

    Configuration options:
        - packages: the packages whose modules are checked (as importers and as owners).
    """

    type_name = "private_names"

    packages = fields.SetField(subfield=fields.ModuleField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        roots = {m.name for m in cast(set[Module], self.packages)}
        modules = {
            m for m in graph.modules if any(m == root or m.startswith(root + ".") for root in roots)
        }
        dirs = _root_dirs({m.split(".")[0] for m in roots})
        uses: list[PrivateUse] = []
        for module in sorted(modules):
            path = source_file(module, dirs)
            if path is None:
                continue
            text = path.read_text(encoding="utf-8")
            uses += private_uses(module, text, path.name == "__init__.py", modules)
        return ContractCheck(kept=not uses, metadata={"uses": sorted(set(uses))})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error("Private names used outside their module:", bold=False)
        output.new_line()
        for use in check.metadata["uses"]:
            output.print_error(f"- {use}", bold=False)
        output.new_line()
