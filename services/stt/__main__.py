"""`python -m services.stt`: the speech-recognition service."""

from runtime.server import main
from services.stt.service import build_spec

if __name__ == "__main__":
    main(build_spec)
