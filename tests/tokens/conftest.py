"""Fixtures for the token conformance suite: one session-scoped rig per PKCS#11 implementation.

Each rig starts once per test session (its services and tokens live in a temporary folder,
except opencryptoki's, see tests/tokens/rigs.py) and is stopped before the next one starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tokens.rigs import RIGS, TokenRig


@pytest.fixture(scope="session", params=list(RIGS))
def rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenRig]:
    """A running implementation with one initialised token (`rig.label`)."""
    folder = tmp_path_factory.mktemp(f"rig-{request.param}")
    with RIGS[request.param](folder) as started:
        yield started


@pytest.fixture(scope="session")
def rig_home(rig: TokenRig) -> Path:
    """The vault home (keyring, config) shared by every test on one rig."""
    home = rig.folder / "vault-home"
    home.mkdir(exist_ok=True)
    for model in rig.officer_allows:  # the officer's decision, as docs/tokens.md tells it
        allowed = rig.run(
            "config", "set", "allow-unreported-local", model, env={"HSM_VAULT_HOME": str(home)}
        )
        assert allowed.returncode == 0, allowed.stderr
    return home
