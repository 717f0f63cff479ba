"""Generated keys, clientIds and secrets can follow an option on a command line."""

from __future__ import annotations

import secrets

import pytest

from pigeonpush import tokens
from pigeonpush.cli import build_parser
from pigeonpush.reglog.devices import new_client_id, new_secret


def test_a_token_with_a_leading_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = iter(["-dash-first", "--two", "fine-one"])
    asked: list[int] = []

    def token_urlsafe(nbytes: int) -> str:
        asked.append(nbytes)
        return next(drawn)

    monkeypatch.setattr(secrets, "token_urlsafe", token_urlsafe)
    assert tokens.url_safe_token(24) == "fine-one"
    assert asked == [24, 24, 24]


def test_generated_values_never_start_with_a_dash_and_keep_their_length() -> None:
    for _ in range(2000):  # a leading "-" comes once in 64 draws of token_urlsafe
        key, client_id, secret = tokens.url_safe_token(24), new_client_id(), new_secret()
        assert not key.startswith("-") and len(key) == 32
        assert not client_id.startswith("-") and len(client_id) == 22
        assert not secret.startswith("-") and len(secret) == 43


def test_a_generated_key_can_follow_key_on_the_command_line() -> None:
    key = tokens.url_safe_token(24)
    args = build_parser().parse_args(
        ["send", "--api", "http://127.0.0.1:8200", "--key", key, "--to", "demo",
         "--title", "t", "--text", "x"]
    )  # fmt: skip
    assert args.key == key
