"""The trust anchors a client keeps for its server: the application key pinned at login, and
the signed server policy, pinned on first fetch and moved forward only along a verified chain.

The decisions are `hsm_vault.trust`'s (`verify_chain`); this module fetches the policies over
HTTP and keeps the newest accepted one in the client config (key "policy").
"""

from __future__ import annotations

from dataclasses import replace

from hsm_vault.client import VaultClient
from hsm_vault.config import Config, attestation_roots
from hsm_vault.errors import ServerTrustError
from hsm_vault.trust import TrustAnchors, verify_chain
from hsm_vault.trust.anchors import PINNED_POLICY_KEY


def pinned_anchors(config: Config) -> TrustAnchors:
    """The anchors in the config: the application key, the policy pinned for that key, and
    the attestation roots this machine trusts."""
    return TrustAnchors.from_pinned(
        config.app_key_spki,
        config.app_fingerprint,
        config.extra.get(PINNED_POLICY_KEY),
        attestation_roots(),
    )


def update_policy(client: VaultClient, config: Config) -> TrustAnchors:
    """Fetch the server's policy in force, accept it only along a verified chain from the
    pinned one (or from policy 1 when none is pinned), pin it, and return the anchors.

    Raises `PolicyVerificationError` naming the rule a policy broke, `ServerTrustError` if the
    server offers an older or a different policy than the pinned one.
    """
    anchors = pinned_anchors(config)
    held = anchors.policy
    current = client.policy()
    if held is not None:
        if current.serial < held.serial:
            raise ServerTrustError(
                f"the server offers policy {current.serial}, older than the pinned "
                f"policy {held.serial}"
            )
        if current.serial == held.serial:
            if current.id != held.id:
                raise ServerTrustError(
                    f"the server's policy {current.serial} differs from the one pinned here"
                )
            return anchors
    first = held.serial + 1 if held is not None else 1
    chain = [client.policy(serial) for serial in range(first, current.serial)]
    chain.append(current)
    verify_chain(chain, anchors.app_spki, held)
    config.extra[PINNED_POLICY_KEY] = current.to_text()
    config.save()
    return replace(anchors, policy=current)
