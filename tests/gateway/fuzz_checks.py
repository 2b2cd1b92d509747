"""The check schemathesis adds to its own when it fuzzes the API (test_fuzz.py
loads this module into `st run` through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import schemathesis

# How Python starts a traceback; no generated value is likely to say it (echoed back, it would).
TRACEBACK = b"Traceback (most recent call last)"


@schemathesis.check
def no_traceback(ctx, response, case) -> None:
    """No body, of an error or not, shows the code behind it."""
    if TRACEBACK in (response.content or b""):
        raise AssertionError("the response body shows a Python traceback")
