"""`python -m services.transcode`: the audio transcoding service (decode, join, tempo, encode)."""

from runtime.server import main
from services.transcode.service import build_spec

if __name__ == "__main__":
    main(build_spec)
