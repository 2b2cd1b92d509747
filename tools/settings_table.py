"""The README's configuration table, generated from the settings the code declares.

    python -m tools.settings_table                 # print the table
    python -m tools.settings_table --write-readme  # replace it in README.md (or the file given)

Every setting is declared once with ``runtime.config.setting``, next to the
code that uses it. Importing the modules that declare them fills
``runtime.config.REGISTRY``; this tool does that for the runtime, the mesh
launcher and every service, and tests/test_mesh.py checks that the README
holds the table it prints.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import runtime
import services
from runtime import config

START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def load_all() -> dict[str, config.Setting]:
    """Import every module that declares settings so the registry is complete (a test
    process may have imported more already: each service keeps its settings in config modules)."""
    for module in pkgutil.iter_modules(runtime.__path__):
        importlib.import_module(f"runtime.{module.name}")
    importlib.import_module("tools.mesh")
    # Every config module of every service, the gateway's edge/config.py included.
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if module.name.rpartition(".")[2] == "config":
            importlib.import_module(module.name)
    return config.REGISTRY


def markdown_table() -> str:
    """The README's configuration table, of the settings declared so far."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for item in sorted(config.REGISTRY.values(), key=lambda s: s.name):
        default = item.documented_default()
        rows.append(f"| `{item.name}` | {f'`{default}`' if default else ''} | {item.doc} |")
    return "\n".join(rows)


def write_readme_table(path: str) -> None:
    """Replace the table between the README's config-table markers."""
    with open(path) as file:
        text = file.read()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as file:
        file.write(f"{head}{START}\n{markdown_table()}\n{END}{tail}")


def main(argv: list[str]) -> int:
    load_all()
    if argv[:1] == ["--write-readme"]:
        write_readme_table(argv[1] if len(argv) > 1 else "README.md")
    else:
        sys.stdout.write(markdown_table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
