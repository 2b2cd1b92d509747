"""`python -m services.library`: the voice library service."""

from runtime.server import main
from services.library.service import build_spec

if __name__ == "__main__":
    main(build_spec)
