"""Another revision's code beside this checkout's, for benchmarks that measure the two in one run.

Not a test helper: benchmarks print, they assert nothing.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
import subprocess
import sys
import tarfile

import harness


def module_at(revision: str, path: str, folder: pathlib.Path):
    """The file `path` as it is at `revision`, imported as a module of its own (named after the file,
    with "_at_revision"); it imports the rest of the code from this checkout."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=harness.ROOT, check=True, capture_output=True, text=True
    ).stdout
    name = pathlib.Path(path).stem + "_at_revision"
    copy = folder / f"{name}.py"
    copy.write_text(source)
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def services_at(revision: str, folder: pathlib.Path) -> pathlib.Path:
    """The `services` package as it is at `revision`, unpacked under `folder`; returns the folder to put
    first on a child process's PYTHONPATH so that its `services` is that revision's (runtime, tools and
    the generated protos still come from this checkout)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "services"], cwd=harness.ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder
