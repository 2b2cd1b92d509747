"""The shared runtime of every voicemesh service: config, logs, errors, server bootstrap, channels."""

import pathlib
import sys

# Generated protobuf modules live in gen/ (made by `make protos`); put them on the
# path so `python -m services.<name>` works from the repository root.
_GEN = pathlib.Path(__file__).resolve().parent.parent / "gen"
if _GEN.is_dir() and str(_GEN) not in sys.path:
    sys.path.append(str(_GEN))
