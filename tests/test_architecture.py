"""The project's shape: an installed package, dependencies that point one way, services alike.

The import contracts live in pyproject.toml ([tool.importlinter]); `lint-imports`
checks them. A copy of the code with one forbidden import added shows that
each contract really fails when broken.
"""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ["runtime", "services", "tools"]
SERVICES = sorted(
    path.name for path in (ROOT / "services").iterdir() if (path / "__init__.py").exists()
)


def lint_imports(cwd: pathlib.Path) -> subprocess.CompletedProcess:
    command = pathlib.Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(command), "--no-cache", "--no-logo"],
        cwd=cwd,
        # The copy first on the path, ahead of the editable install of the real code.
        env={**os.environ, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


# The contracts' names in pyproject.toml.
LAYERS = "Layers: tools above services above runtime"
RUNTIME_ALONE = "The runtime imports no service and no tool"
SERVICES_APART = "Each service is independent of the others (they meet over gRPC)"
NO_CYCLES = "No import cycles among the modules of a package"
EDGE = "Gateway: the edge does not import generation"
GATEWAY_LAYERS = "Gateway layers: service, dialects, generation, accounts, store"
DIALECTS_APART = "Gateway: no dialect imports another"
STORE_ONLY = "Gateway: only the store talks to PostgreSQL"
SYNTH_ENGINE = "Synth engine layers: core, its parts, what they use, what they share"
SCHEDULER_NO_TORCH = "Synth engine: the scheduler is policy and knows no torch"


@pytest.mark.parametrize(
    "module, added, contract",
    [
        ("runtime/logs.py", "from tools import mesh", RUNTIME_ALONE),
        ("runtime/logs.py", "from services.transcode import config", LAYERS),
        ("services/stt/limiter.py", "from tools import mesh", LAYERS),
        ("services/library/rules.py", "from services.stt import config", SERVICES_APART),
        ("runtime/errors.py", "from runtime import server", NO_CYCLES),
        ("services/gateway/generation/pipeline.py", "from services.gateway.dialects.openai import speech", GATEWAY_LAYERS),
        ("services/gateway/store/files.py", "from services.gateway.generation import files", GATEWAY_LAYERS),
        ("services/gateway/dialects/openai/speech.py", "from services.gateway.dialects.predictor import inputs", DIALECTS_APART),
        ("services/gateway/generation/pipeline.py", "import asyncpg", STORE_ONLY),
        ("services/gateway/dialects/predictor/files.py", "from runtime import database", STORE_ONLY),
        ("services/synth/engine/runner.py", "from services.synth.engine import scheduler", SYNTH_ENGINE),
        ("services/synth/engine/scheduler.py", "from services.synth.engine import runner", SYNTH_ENGINE),
        ("services/synth/engine/output_processor.py", "from services.synth.engine.runner import Finished", SYNTH_ENGINE),
        ("services/synth/engine/sampler.py", "from services.synth.engine import runner", SYNTH_ENGINE),
        ("services/synth/engine/request.py", "from services.synth.engine import sampler", SYNTH_ENGINE),
        ("services/synth/engine/scheduler.py", "import torch", SCHEDULER_NO_TORCH),
        # Through what it imports, too: the request types name torch only for type checkers.
        ("services/synth/engine/request.py", "import torch", SCHEDULER_NO_TORCH),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, added, contract):
    copy = copy_of_the_code(tmp_path)
    path = copy / module
    path.write_text(path.read_text() + f"\n{added}\n")
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout, result.stdout


def test_the_gateway_edge_may_not_import_generation_once_both_exist(tmp_path):
    copy = copy_of_the_code(tmp_path)
    gateway = copy / "services" / "gateway"
    for name in ("edge", "generation"):
        (gateway / name).mkdir(exist_ok=True)
        (gateway / name / "__init__.py").touch()
    kept = lint_imports(copy)
    assert kept.returncode == 0, kept.stdout
    (gateway / "edge" / "uses_generation.py").write_text("from services.gateway import generation\n")
    broken = lint_imports(copy)
    assert f"{EDGE} BROKEN" in broken.stdout, broken.stdout


def copy_of_the_code(tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / "copy"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    return copy


# --- The installed project ---------------------------------------------------------------


def test_the_packages_import_from_anywhere_without_a_path_setting(tmp_path):
    code = (
        "import runtime, services, tools, voice.transcode.v1.transcode_pb2 as pb;"
        "print(runtime.__file__, services.__file__, tools.__file__, pb.__file__)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    files = [pathlib.Path(name) for name in result.stdout.split()]
    assert files[:3] == [ROOT / name / "__init__.py" for name in PACKAGES]
    assert files[3] == ROOT / "gen" / "voice" / "transcode" / "v1" / "transcode_pb2.py"


def test_no_code_edits_sys_path():
    edits = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in [*PACKAGES, "tests", "bench"]
        for path in (ROOT / folder).rglob("*.py")
        if path != pathlib.Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "sys.path" in line
    ]
    assert not edits, f"the installed project needs no sys.path edits: {edits}"


def test_pyproject_and_requirements_pin_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    locked = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert declared == locked
    assert all("==" in requirement for requirement in declared)
    assert "torch==2.13.0" in declared


# --- Every service folder alike --------------------------------------------------------


def test_every_service_is_run_by_the_same_main():
    assert {"gateway", "library", "transcode", "stt", "synth"} <= set(SERVICES)
    for name in SERVICES:
        tree = ast.parse((ROOT / "services" / name / "__main__.py").read_text())
        body = tree.body[1:] if ast.get_docstring(tree) else tree.body
        code = "\n".join(ast.unparse(statement) for statement in body)
        assert code == (
            "from runtime.server import main\n"
            f"from services.{name}.service import build_spec\n"
            "if __name__ == '__main__':\n"
            "    main(build_spec)"
        ), f"services/{name}/__main__.py"


def test_every_service_builds_its_spec_in_service_py_and_declares_settings_in_config_py():
    for name in SERVICES:
        tree = ast.parse((ROOT / "services" / name / "service.py").read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert "build_spec" in functions, f"services/{name}/service.py has no build_spec"
        config = (ROOT / "services" / name / "config.py").read_text()
        assert "from runtime.config import" in config and "setting(" in config, f"services/{name}/config.py"
