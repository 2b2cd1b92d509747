"""The page size rule of every List RPC (AIP-158): 0 means the default, else 1 to the maximum."""

from __future__ import annotations

from runtime.errors import invalid_parameter

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(value: int) -> int:
    """The page size a request asks for; out of range is INVALID_PARAMETER naming page_size."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise invalid_parameter("page_size", f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {value}")
    return value
