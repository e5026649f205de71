"""The dependency direction, checked on the source: delivery -> services -> domain -> data.

Every `gateway` import (module level or inside a function) must point at the same layer or one
below; chartkit imports no gateway code; dags_utils imports neither the web app nor services.
The layers are the README's "Layout" section, as data.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A module may import its own layer and any layer below.
LAYERS: dict[str, int] = {
    # base: what every layer may use
    "gateway.settings": 0,
    "gateway.errors": 0,
    "gateway.strictjson": 0,
    "gateway.observability": 0,
    "gateway.tracing": 0,
    # data
    "gateway.models": 1,
    "gateway.db": 1,
    "gateway.repository": 1,
    "gateway.rows": 1,
    "gateway.minio_urls": 1,
    "gateway.objectstore": 1,
    "gateway.mlflow_backend": 1,
    "gateway.mlflow_runs": 1,
    "gateway.sharedstore": 1,
    # domain
    "gateway.breaker": 2,
    "gateway.lineage": 2,
    "gateway.resolver": 2,
    "gateway.runs": 2,
    "gateway.bytecache": 2,
    "gateway.sharedflight": 2,
    "gateway.workers": 2,
    "gateway.renderer": 2,
    "gateway.images": 2,
    "gateway.snapshots": 2,
    "gateway.restricted": 2,
    "gateway.repair": 2,
    "gateway.verify": 2,
    "gateway.demo": 2,
    # services
    "gateway.answers": 2,
    "gateway.services": 3,
    "gateway.run_graph": 3,
    # delivery
    "gateway.problems": 4,
    "gateway.deadline": 4,
    "gateway.routes": 4,
    "gateway.ui": 4,
    "gateway.cli": 4,
    "gateway.serving": 4,
    "gateway.app": 4,
    "gateway.gql": 4,
}
NAMES = {0: "base", 1: "data", 2: "domain", 3: "services", 4: "delivery"}
# Delivery modules do not import each other (a helper two of them need lives lower down),
# except the shared HTTP edge (problems) and the app that assembles them all.
DELIVERY_SHARED = {"gateway.problems"}
# `gateway export-schema` writes the GraphQL SDL and `gateway serve` runs the server: the CLI
# commands that are about another delivery module.
DELIVERY_ALLOWED = {("gateway.cli", "gateway.gql"), ("gateway.cli", "gateway.serving")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The LAYERS key a module belongs to (a package entry covers its submodules)."""
    for key in sorted(LAYERS, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and the README's Layout")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def gateway_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "gateway").rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", gateway_modules(), ids=lambda p: module_name(p))
def test_gateway_imports_point_down(path: Path) -> None:
    me = layer_of(module_name(path))
    wrong = []
    for imported in imports_of(path):
        if not imported.startswith("gateway."):
            continue
        try:
            target = layer_of(imported)
        except AssertionError:
            continue  # `from gateway import x` adds gateway.x: checked as its own entry
        if target == me:
            continue
        if LAYERS[target] > LAYERS[me]:
            wrong.append(f"{imported} ({NAMES[LAYERS[target]]})")
        elif (
            LAYERS[me] == LAYERS[target] == 4
            and me != "gateway.app"
            and target not in DELIVERY_SHARED
            and (me, target) not in DELIVERY_ALLOWED
        ):
            wrong.append(f"{imported} (another delivery module)")
    assert not wrong, f"{module_name(path)} ({NAMES[LAYERS[me]]}) imports upward: {wrong}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("chartkit", ("gateway", "dags_utils", "matplotlib.pyplot")),
        ("dags_utils", ("gateway.app", "gateway.services", "gateway.gql", "gateway.ui", "airflow")),
    ],
)
def test_libraries_keep_their_distance(package: str, forbidden: tuple[str, ...]) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = {
            name
            for name in imports_of(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        }
        assert not bad, f"{module_name(path)} imports {sorted(bad)}"
