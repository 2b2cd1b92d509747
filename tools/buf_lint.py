"""Lint protos/ with buf's STANDARD rules.

buf (from the npm package @bufbuild/buf, installed by `make` under var/buf)
needs every import on disk: the google/api and google/rpc protos are copied
from the installed googleapis-common-protos package into a scratch workspace,
next to our own protos, and excluded from the lint.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

import google.api

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUF = ROOT / "var" / "buf" / "node_modules" / ".bin" / "buf"

WORKSPACE = """version: v2
modules:
  - path: protos
    lint:
      use: [STANDARD]
  - path: third_party
    lint:
      ignore: [third_party]
"""


def lint(buf: pathlib.Path = BUF) -> subprocess.CompletedProcess:
    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    with tempfile.TemporaryDirectory() as scratch:
        workspace = pathlib.Path(scratch)
        shutil.copytree(ROOT / "protos", workspace / "protos")
        for package in ("api", "rpc"):
            target = workspace / "third_party" / "google" / package
            target.mkdir(parents=True)
            for proto in (googleapis / "google" / package).glob("*.proto"):
                shutil.copy(proto, target)
        (workspace / "buf.yaml").write_text(WORKSPACE)
        return subprocess.run(
            [str(buf), "lint"], cwd=workspace, capture_output=True, text=True, timeout=120
        )


if __name__ == "__main__":
    result = lint()
    sys.stdout.write(result.stdout + result.stderr)
    sys.exit(result.returncode)
