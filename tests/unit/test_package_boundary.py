"""The deployed code stands alone: a deployment holds ``function_app.py`` and ``irm_connector/`` but not the
stand-ins, the benchmark or the tests (``.funcignore``), so nothing deployed may import them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_DEPLOYED = {"standins", "bench", "tests"}


def _imported(path: Path) -> set[str]:
    """Every absolute module name the file imports, wherever the import stands (in a function too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_deployed_code_imports_nothing_that_is_not_deployed() -> None:
    files = [ROOT / "function_app.py", *sorted((ROOT / "irm_connector").rglob("*.py"))]
    offending = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imported(path)
        if name.split(".")[0] in NOT_DEPLOYED
    )
    assert offending == []


def test_key_material_in_the_checkout_is_never_packaged() -> None:
    """The deploy docs export a certificate to the working directory (``-f cert.pfx``); a key left there went into
    the next ``azd deploy`` package, onto the app's file system."""
    from fnmatch import fnmatch

    patterns = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]  # fmt: skip
    for name in ("cert.pfx", "o365.p12", "key.pem", "app.key", "app.crt", "app.cer", ".env", ".env.local"):
        assert any(fnmatch(name, pattern) for pattern in patterns), name
    for deployed in ("function_app.py", "host.json", "requirements.txt", "irm_connector"):
        assert not any(fnmatch(deployed, pattern) for pattern in patterns), deployed
