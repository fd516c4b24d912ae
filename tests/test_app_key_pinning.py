"""Login's pinning decision for a server's application key, one case per rule
(`hsm_vault.trust.anchors.check_app_key`; the CLI only shows, asks and stores)."""

from __future__ import annotations

import pytest

from hsm_vault.errors import ServerTrustError, UsageError
from hsm_vault.trust.anchors import AppKeyCheck, check_app_key

KEY = "ab" * 32
OTHER = "cd" * 32
COPIED = ":".join(KEY.upper()[i : i + 2] for i in range(0, 64, 2))  # as people copy it


@pytest.mark.parametrize(
    ("given", "pinned", "expected"),
    [
        (KEY, None, AppKeyCheck.CHECKED),
        (COPIED, None, AppKeyCheck.CHECKED),  # case and separators do not matter
        (KEY, OTHER, AppKeyCheck.CHECKED),  # a given fingerprint is how a change is accepted
        (None, KEY, AppKeyCheck.PINNED),
        (None, None, AppKeyCheck.UNCHECKED),  # first login: show it and ask
    ],
)
def test_what_login_must_still_do(
    given: str | None, pinned: str | None, expected: AppKeyCheck
) -> None:
    assert check_app_key(KEY, given=given, pinned=pinned) is expected


def test_a_different_given_fingerprint_is_refused() -> None:
    with pytest.raises(ServerTrustError, match="not the one you were given"):
        check_app_key(KEY, given=OTHER, pinned=None)


@pytest.mark.parametrize("given", [KEY[:16], KEY + "00", "zz" * 32])
def test_a_given_fingerprint_must_be_all_64_hex_digits(given: str) -> None:
    with pytest.raises(UsageError, match="64 hex digits"):
        check_app_key(KEY, given=given, pinned=None)


def test_a_changed_pinned_key_is_refused() -> None:
    with pytest.raises(ServerTrustError, match="changed: pinned"):
        check_app_key(KEY, given=None, pinned=OTHER)
