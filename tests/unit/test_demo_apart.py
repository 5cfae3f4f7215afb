"""The demo stays apart from the product: outside hearth/demo/ only the CLI's demo commands
import it, and the provider registry its one spec; the product's modules, imported as the
controller imports them, load nothing more of the demo than that spec.

Checked on the source's own import statements (every module, relative imports resolved) and
in fresh interpreters, where sys.modules shows what an import really pulled in.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hearth

SRC = Path(hearth.__file__).parent
DEMO = "hearth.demo"
REGISTRATION = ("hearth.providers", "hearth.demo.provider")  # (importer, what it imports)
DEMO_COMMANDS = {"hearth.cli"}  # `hearth demo` and `hearth vm demo`
PRODUCT = (
    "hearth.api.app",
    "hearth.core.runtime",
    "hearth.core.auth_sessions",
    "hearth.net.topology",
    "hearth.vmm.qemu",
    "hearth.vmm.firecracker",
    "hearth.store",
    "hearth.providers",
    "hearth.guest.agent",
    "hearth.image.builder",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module name `path` imports, relative imports made absolute; `from a import b`
    counts as both a and a.b, since b may be a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_demo(name: str) -> bool:
    return name == DEMO or name.startswith(DEMO + ".")


PRODUCT_FILES = sorted(
    p for p in SRC.rglob("*.py") if not is_demo(module_name(p)) and "__pycache__" not in p.parts
)


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(SRC.parent)))
def test_the_product_imports_nothing_of_the_demo_but_its_provider_spec(path: Path) -> None:
    name = module_name(path)
    demo_imports = {i for i in imported(path) if is_demo(i)}
    if name in DEMO_COMMANDS:
        return
    if name == REGISTRATION[0]:
        assert demo_imports == {REGISTRATION[1], f"{REGISTRATION[1]}.SPEC"}
    else:
        assert demo_imports == set(), f"{name} imports {', '.join(sorted(demo_imports))}"


def loaded_after(*statements: str) -> dict:
    """What a fresh interpreter has loaded of the demo after `statements`, and the registry's
    demo spec is the demo module's own."""
    script = "\n".join(
        [
            "import json, sys",
            *statements,
            "import hearth.demo.provider, hearth.providers",
            "print(json.dumps({",
            "    'demo': sorted(m for m in sys.modules if m.startswith('hearth.demo')),",
            "    'registered': hearth.providers.get('demo') is hearth.demo.provider.SPEC,",
            "}))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_product_loads_only_the_demo_provider_spec() -> None:
    loaded = loaded_after(*(f"import {name}" for name in PRODUCT))
    assert loaded == {"demo": ["hearth.demo", "hearth.demo.provider"], "registered": True}


@pytest.mark.parametrize("first", ["hearth.demo.provider", "hearth.demo.stack", "hearth.providers"])
def test_the_registration_cycle_resolves_whichever_module_comes_first(first: str) -> None:
    assert loaded_after(f"import {first}")["registered"] is True
