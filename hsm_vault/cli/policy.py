"""`hsm-vault policy ...`: the server's signed policy (how many officers approve a card, and
who the officers are): show it, propose a change, sign a proposal on your token.

The policy is pinned in the client config and moves forward only along a chain each link of
which is signed by the application key and the officer quorum of the link before.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    YesOpt,
    console,
    err_console,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.config import Config
from hsm_vault.errors import PolicyVerificationError, UsageError
from hsm_vault.trust import SignedPolicy, TrustAnchors


class Toggle(StrEnum):
    YES = "yes"
    NO = "no"


policy_app = typer.Typer(
    help="The server's signed policy: officer approvals per card, and the officers.",
    no_args_is_help=True,
)


def policy_summary(policy: SignedPolicy) -> dict[str, Any]:
    """A policy as plain data, for --json, `policy show` and `whoami`."""
    body = policy.body
    return {
        "serial": policy.serial,
        "id": policy.id,
        "version": policy.version,
        "approvals": body.approvals,
        "require_attestation": body.require_attestation,
        "recovery": body.recovery.to_json() if body.recovery is not None else None,
        "max_head_age": body.max_head_age,
        "officers": [
            {"username": o.username, "identity": o.identity, "card_id": o.card_id}
            for o in body.officers
        ],
        "bootstrap": not body.complete,
        "created_at": body.created_at,
        "signed_by": list(policy.signers),
    }


def print_policy(policy: SignedPolicy, label: str = "policy") -> None:
    summary = policy_summary(policy)
    console.print(f"{label:<13}serial {summary['serial']} ({summary['id'][:16]}..)")
    console.print(f"approvals    {summary['approvals']} officer(s) per card")
    console.print(
        "attestation  "
        + ("required: only cards with attested keys" if summary["require_attestation"] else "-")
    )
    for officer in summary["officers"]:
        console.print(
            f"officer      {officer['username']} ({officer['identity']}), card "
            f"{officer['card_id'][:16]}"
        )
    console.print(f"signed by    {', '.join(summary['signed_by']) or '-'}")
    if summary["bootstrap"]:
        console.print(
            "[yellow]bootstrap:[/] fewer officers than approvals; the application key alone "
            "signs policy changes until the ceremony names them",
            markup=True,
        )


def _client() -> tuple[Any, TrustAnchors, Config]:
    from hsm_vault.client import VaultClient
    from hsm_vault.client.pinning import update_policy

    config = Config.load()
    client = VaultClient.from_config(config)
    try:
        return client, update_policy(client, config), config
    except BaseException:
        client.close()
        raise


@policy_app.command("show")
def show(json_out: JsonOpt = False) -> None:
    """Fetch the server's policy, verify it from the pinned one, pin it, and show it."""
    client, anchors, _ = _client()
    client.close()
    if anchors.policy is None:  # update_policy pins one or raises
        raise PolicyVerificationError("the server has no policy")
    if json_out:
        print_json(policy_summary(anchors.policy))
        return
    print_policy(anchors.policy)


def _recovery_rule(
    card: str | None, officers: list[str] | None, threshold: int | None
) -> dict[str, Any] | None:
    """The recovery options as the policy's rule (checked by the server and by every client)."""
    if card is not None and (officers or threshold is not None):
        raise UsageError("a recovery rule is a card or officer shares, not both")
    if card is not None:
        return {"method": "card", "card_id": card.lower()}
    if not officers:
        if threshold is not None:
            raise UsageError("--recovery-threshold goes with --recovery-officer")
        return None
    if threshold is None:
        raise UsageError("say how many shares recover a file: --recovery-threshold K")
    return {"method": "officer-shares", "officers": sorted(set(officers)), "threshold": threshold}


@policy_app.command("propose")
def propose(
    approvals: Annotated[
        int | None, typer.Option("--approvals", min=0, max=16, help="New approvals per card.")
    ] = None,
    add_officer: Annotated[
        list[str] | None,
        typer.Option("--add-officer", help="Officer account to name (its card is approved)."),
    ] = None,
    remove_officer: Annotated[
        list[str] | None, typer.Option("--remove-officer", help="Officer to remove.")
    ] = None,
    require_attestation: Annotated[
        Toggle | None,
        typer.Option(
            "--require-attestation",
            help="yes: the server publishes, and clients accept, only cards with attested keys.",
        ),
    ] = None,
    recovery_card: Annotated[
        str | None,
        typer.Option(
            "--recovery-card",
            metavar="CARD_ID",
            help="Recovery rule: every file is also wrapped to this card (kept offline).",
        ),
    ] = None,
    recovery_officer: Annotated[
        list[str] | None,
        typer.Option(
            "--recovery-officer",
            help="Recovery rule: an officer holding a share of every file key. Repeatable; "
            "goes with --recovery-threshold.",
        ),
    ] = None,
    recovery_threshold: Annotated[
        int | None,
        typer.Option("--recovery-threshold", min=1, max=64, help="Shares needed to recover."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Propose the next policy (officers). The officers of the policy in force sign it with
    'hsm-vault policy sign'; it is in force once their quorum has."""
    recovery = _recovery_rule(recovery_card, recovery_officer, recovery_threshold)
    if (
        approvals is None
        and not add_officer
        and not remove_officer
        and not require_attestation
        and recovery is None
    ):
        raise UsageError(
            "propose a change",
            hint="Give --approvals, --add-officer, --remove-officer, --require-attestation, "
            "--recovery-card or --recovery-officer.",
        )
    client, _anchors, _ = _client()
    with client:
        proposal = client.propose_policy(
            approvals=approvals,
            add_officers=tuple(add_officer or ()),
            remove_officers=tuple(remove_officer or ()),
            require_attestation=(
                None if require_attestation is None else require_attestation is Toggle.YES
            ),
            recovery=recovery,
        )
    if json_out:
        print_json(policy_summary(proposal))
        return
    print_policy(proposal, "proposed")
    console.print("The officers of the policy in force sign it with: hsm-vault policy sign")


@policy_app.command("sign")
def sign(
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="Your officer card's token key (default: its own)."),
    ] = None,
    yes: YesOpt = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign the open policy proposal on your token (officers of the policy in force)."""
    from hsm_vault.cli.card_server import _officer_key_ref
    from hsm_vault.trust import officer_signer
    from hsm_vault.trust.policy import sign_policy

    client, anchors, config = _client()
    with client:
        proposal = client.policy_proposal()
        held = anchors.policy
        if held is None or proposal.serial != held.serial + 1 or proposal.body.previous != held.id:
            raise PolicyVerificationError("the proposal does not follow the policy pinned here")
        if not json_out:
            print_policy(proposal, "proposed")
        if not yes:
            typer.confirm("Sign this policy on your token?", default=False, abort=True)
        username = config.username or ""
        own, key_ref = _officer_key_ref(anchors, username, key)
        with token_session(module, split_token_from_key(key_ref, token), pin_file) as ts:
            token_key = ts.find_key(key_ref)
            if token_key.spki_der != own.spki_der:
                raise UsageError(f"key {key_ref!r} is not the key of your officer card")
            signed = sign_policy(
                proposal,
                officer_signer(username),
                token_key.spki_der,
                token_key.key_type.signature_algorithm,
                lambda m: ts.sign(token_key, m),
            )
        signature = signed.signature_by(officer_signer(username))
        if signature is None:
            raise PolicyVerificationError("no signature was made")
        result = client.sign_policy_proposal(proposal.id, signature)
        adopted = result.signature_by("app") is not None
        if adopted:
            from hsm_vault.client.pinning import update_policy

            update_policy(client, config)
    if json_out:
        print_json({**policy_summary(result), "in_force": adopted})
        return
    if adopted:
        console.print(f"policy {result.serial} is in force (pinned here)")
    else:
        err_console.print(
            f"your signature is recorded: {len(result.signers)} of "
            f"{held.body.approvals} officer signatures"
        )


def register(app: typer.Typer) -> None:
    """Add the `policy` command group."""
    app.add_typer(policy_app, name="policy")
