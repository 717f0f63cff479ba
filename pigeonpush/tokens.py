"""Random URL-safe strings for values that people type after an option.

Generated API keys, clientIds and device secrets end up on command lines
(``pigeonpush send --key K --to C``, ``pigeonpush listen --secret S``), where
argparse takes a value that starts with ``-`` for an option of its own: one
``secrets.token_urlsafe`` value in 64 does. These are drawn again until they
do not, which costs a fraction of a bit of their entropy.
"""

from __future__ import annotations

import secrets


def url_safe_token(nbytes: int) -> str:
    """``secrets.token_urlsafe(nbytes)`` that does not start with ``-``."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token
