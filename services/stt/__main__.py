"""`python -m services.stt`: the speech-recognition service."""

from runtime.server import main
from services.stt.service import build_spec

main(build_spec)
