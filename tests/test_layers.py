"""The distribution's layers hold (docs/development.md, "Layout"), read from the imports themselves (ast).

The core imports no transport and nothing above it; the server imports the core, never the SDK; the web
gateway is no part of the server; nothing outside the SDK imports its private modules but its tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "client"
SOURCES = ("client", "handler", "tools", "benchmarks", "loadtests", "docker", "docs", "tests")


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (functions, TYPE_CHECKING blocks), absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = path.relative_to(CLIENT if path.is_relative_to(CLIENT) else ROOT).parent.parts
            base = ".".join(package[: len(package) - node.level + 1])
            names |= {f"{base}.{node.module}" if node.module else base}
    return names


def modules(*folders: str) -> list[Path]:
    found = [p for folder in folders for p in (ROOT / folder).rglob("*.py") if "_generated" not in p.parts]
    assert found, f"no Python files under {folders}"
    return sorted(found)


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(imported(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_server_imports_the_core_never_the_sdk():
    assert offending(modules("handler"), ("u2net_client", "u2serve.web", "u2serve.apps")) == []


def test_the_core_imports_no_transport_and_nothing_above_it():
    forbidden = ("grpc", "u2net_client", "u2serve.web", "u2serve.apps", "handler", "fastapi", "torch")
    assert offending(modules("client/u2serve/core"), forbidden) == []


def test_the_web_gateway_is_no_part_of_the_server():
    assert offending(modules("client/u2serve/web"), ("handler",)) == []


def test_only_the_sdk_and_its_tests_import_its_private_modules():
    outside = [
        p for p in modules(*SOURCES) if not p.is_relative_to(CLIENT / "u2net_client") and p.parent.name != "tests"
    ]
    private = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in outside
        for name in sorted(imported(path))
        if name.startswith("u2net_client.") and name.split(".")[1].startswith("_")
    ]
    assert private == []


# The SDK's modules that only re-export the core's or the apps' (u2net_client.options is the SDK's own Options).
ALIASES = ("imaging", "compose", "refine", "cli", "evaluation")
# Tests of those public names themselves: this file, and the SDK's command-line tests (u2net_client.cli).
ALIAS_TESTS = ("test_layers.py", "test_client.py")


@pytest.mark.parametrize("alias", ALIASES)
def test_nothing_in_the_project_imports_the_core_or_the_apps_through_the_sdks_aliases(alias):
    """u2net_client.imaging, .cli, ... stay importable for users; the project imports u2serve directly."""
    outside = [
        p for p in modules(*SOURCES) if not p.is_relative_to(CLIENT / "u2net_client") and p.name not in ALIAS_TESTS
    ]
    users = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in outside
        for name in sorted(imported(path))
        if name == f"u2net_client.{alias}" or name.startswith(f"u2net_client.{alias}.")
    ]
    assert users == []


def test_the_sdks_public_modules_are_still_importable():
    import u2net_client
    from u2net_client import cli, compose, evaluation, imaging, options, refine, rembg

    assert cli.main and compose.compose and imaging.decode_image and refine and rembg.remove
    assert evaluation.evaluate_served and options.Options is u2net_client.Options
