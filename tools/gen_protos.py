"""Generate Python code (with .pyi stubs) for every proto under protos/ into gen/.

google/api and google/rpc protos are taken from the installed
googleapis-common-protos package and the well-known types from grpcio-tools,
so nothing is vendored. Run through `make protos`.

Beside the code it writes ``gen/voice/descriptors.binpb``: our protos as a
descriptor set with their comments, which the generated code leaves out.
Every service serves those over reflection (runtime.server), so the gateway
can publish the comments in /openapi.json.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import google.api
import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DESCRIPTOR_SET = "descriptors.binpb"


def main(out: pathlib.Path = ROOT / "gen") -> int:
    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    if out.exists():
        shutil.rmtree(out)
    (out / "voice").mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--descriptor_set_out={out / 'voice' / DESCRIPTOR_SET}",
        "--include_source_info",
        *files,
    ]
    if protoc.main(args) != 0:
        return 1
    # Generated modules import each other as voice.<svc>.v1.*: make them packages.
    for directory in [out / "voice", *(out / "voice").rglob("*")]:
        if directory.is_dir():
            (directory / "__init__.py").touch()
    print(f"generated {len(files)} protos into {out.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
