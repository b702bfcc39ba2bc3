"""The architecture's import rules, checked on the source: the runtime knows nothing of the network,
and the two front ends know neither each other nor ONNX Runtime (they go through the service)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(folder: Path) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in folder.rglob("*.py"):
        if "generated" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("runtime", ("gateway", "grpc", "aiohttp", "prometheus_client")),
        ("gateway/http", ("gateway.grpc", "onnxruntime", "grpc")),
        ("gateway/grpc", ("gateway.http", "onnxruntime", "aiohttp")),
    ],
)
def test_imports_respect_the_layers(folder: str, forbidden: tuple[str, ...]) -> None:
    modules = imported_modules(ROOT / folder)
    assert modules, f"no sources found under {folder}"
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in modules.items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []
