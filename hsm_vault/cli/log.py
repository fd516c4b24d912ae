"""`hsm-vault log ...`: the server's transparency log of every directory and account event.

`head` shows the verified tree head (to compare with a colleague, or with one published
elsewhere), `verify` recomputes the whole log and checks every signature in it, `monitor`
lists every card the log ever bound to an identity, `show` lists events for an audit. Every
command first brings the head kept in the config forward along a consistency proof.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hsm_vault.cli.common import JsonOpt, YesOpt, console, print_json
from hsm_vault.cli.shapes import print_list
from hsm_vault.config import Config
from hsm_vault.errors import LogForkError, LogProofError, UsageError
from hsm_vault.trust.log import ALERT, LogEntry, LogState, SignedTreeHead

log_app = typer.Typer(
    help="The server's transparency log: every card, policy and account event, signed.",
    no_args_is_help=True,
)


def _open() -> tuple[Any, Any]:
    """A client of the logged-in server and its log, brought up to the server's head."""
    from hsm_vault.client import VaultClient
    from hsm_vault.client.pinning import update_policy

    config = Config.load()
    client = VaultClient.from_config(config)
    try:
        anchors = update_policy(client, config)
    except BaseException:
        client.close()
        raise
    return client, anchors.log


def head_summary(state: LogState) -> dict[str, Any]:
    head = state.head.head
    return {
        "size": head.size,
        "root": head.root_hex,
        "time": head.timestamp,
        "app_key": head.app_key_id,
        "head": state.head.to_text(),
    }


def _check_expected(client: Any, state: LogState, expected: str, app_spki: bytes) -> None:
    """The head matches `expected` (a root in hex, or a signed head line that the current
    head must extend)."""
    from hsm_vault.trust.merkle import verify_consistency

    if expected.startswith("hsmv-head-"):
        other = SignedTreeHead.from_text(expected)
        other.verify(app_spki)
        if other.size > state.size:
            raise LogForkError(
                f"the expected head has {other.size} entries, more than the server's "
                f"{state.size}: {ALERT}"
            )
        proof = client.log_head(other.size).get("consistency") or []
        from hsm_vault.trust.log import parse_hashes

        try:
            verify_consistency(
                other.size, state.size, other.root, state.head.root, parse_hashes(proof)
            )
        except LogProofError:
            raise LogForkError(
                f"the server's log does not extend the expected head of {other.size} entries "
                f"(a fork: you and the other reader were shown different logs): {ALERT}"
            ) from None
        return
    wanted = expected.strip().lower()
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise UsageError(
            "--expect-head takes a root hash (64 hex digits) or a head line (hsmv-head-1:...)"
        )
    if wanted != state.head.head.root_hex:
        raise LogForkError(
            f"the server's head ({state.size} entries, root {state.head.head.root_hex[:16]}..) "
            f"is not the expected {wanted[:16]}..: if the other head is older, compare its "
            f"whole line (hsmv-head-1:...); otherwise {ALERT}"
        )


@log_app.command("head")
def head(
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            help="A root hash (hex) the head must have, or a head line it must extend.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the server's current tree head, verified and kept (to compare out of band)."""
    client, log = _open()
    with client:
        state = log.state
        if expect_head is not None:
            _check_expected(client, state, expect_head, log.app_spki)
    summary = head_summary(state)
    if json_out:
        print_json({**summary, "expected": expect_head is not None})
        return
    console.print(f"entries      {summary['size']}")
    console.print(f"root         {summary['root']}")
    console.print(f"signed at    {summary['time']}")
    console.print(f"head         {summary['head']}", soft_wrap=True)
    if expect_head is not None:
        console.print("matches the expected head")


@log_app.command("verify")
def verify(json_out: JsonOpt = False) -> None:
    """Download the whole log, recompute it, and check every signature in every entry (self,
    application key, officers, revocations, policies) and that it extends the head kept."""
    import time

    from hsm_vault.client.logsync import verify_all

    started = time.perf_counter()
    client, log = _open()
    with client:
        report = verify_all(client, log)
    seconds = time.perf_counter() - started
    summary = {
        **head_summary(log.state),
        "cards": len(report.cards),
        "users": len(report.users),
        "policy_serial": report.policy_serial,
        "events": report.counts,
        "seconds": round(seconds, 3),
    }
    if json_out:
        print_json({"verified": True, **summary})
        return
    console.print(
        f"log verified: {summary['size']} entries, root {summary['root'][:16]}.., "
        f"{summary['cards']} cards, {summary['users']} users, policy {summary['policy_serial']} "
        f"({seconds:.2f} s)"
    )


@log_app.command("monitor")
def monitor(
    identity: Annotated[str, typer.Argument(help="The identity to watch (e.g. your own).")],
    json_out: JsonOpt = False,
) -> None:
    """Every card the log ever bound to IDENTITY, with its status (the whole log is verified
    first): a card you did not make on your token means someone else holds your name."""
    from hsm_vault.client.logsync import verify_all

    client, log = _open()
    with client:
        report = verify_all(client, log)
    cards = report.cards_of(identity)
    rows = [
        {
            "id": c.card_id,
            "owner": c.owner,
            "status": c.status,
            "approved_at": c.time,
            "entry": c.approved_at,
            "status_entry": c.status_at,
            "previous_id": c.previous_id,
        }
        for c in cards
    ]
    if json_out:
        print_list("cards", rows, identity=identity, log_size=report.head.size)
        return
    if not rows:
        console.print(f"the log ({report.head.size} entries) binds no card to {identity!r}")
        return
    console.print(f"cards the log ({report.head.size} entries) binds to {identity!r}:")
    for card in cards:
        console.print(
            f"{card.card_id[:16]}  {card.status:<10} approved {card.time} "
            f"(entry {card.approved_at}, owner {card.owner})"
        )
    console.print("Compare with 'hsm-vault card list': alert your officer about any you lack.")


@log_app.command("show")
def show(
    since: Annotated[int, typer.Option("--since", min=0, help="First entry to show.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """The log's events from entry N on (checked against the verified head), for an audit."""
    from hsm_vault.client.logsync import download

    client, log = _open()
    state: LogState = log.state
    if since > state.size:
        client.close()
        raise UsageError(f"the log has {state.size} entries: --since is past its end")
    with client:
        entries, frontier = download(client, since, state.size)
    if frontier.extend(e.leaf_hash for e in entries).root() != state.head.root or any(
        e.index != since + i for i, e in enumerate(entries)
    ):
        raise LogProofError(f"the entries the server sent do not make up its head: {ALERT}")
    rows = [_row(e) for e in entries]
    if json_out:
        print_json({"head": head_summary(state), "entries": rows})
        return
    for row in rows:
        console.print(
            f"{row['index']:>6}  {row['at']}  {row['kind']:<15} {row['actor']:<16} "
            f"{row['summary']}",
            soft_wrap=True,
        )
    console.print(
        f"({len(rows)} of {state.size} entries; head root {state.head.head.root_hex[:16]}..)"
    )


@log_app.command("forget")
def forget(yes: YesOpt = False) -> None:
    """Drop the log head kept for the server (after a restore your officers confirmed): the
    next contact accepts the server's head as on a first contact."""
    from hsm_vault.client.logsync import LOG_STATE_KEY

    config = Config.load()
    if LOG_STATE_KEY not in config.extra:
        console.print("no log head is kept")
        return
    if not yes:
        typer.confirm(
            "Forget the log head kept here? Do this only when your security officer says so",
            default=False,
            abort=True,
        )
    del config.extra[LOG_STATE_KEY]
    config.save()
    console.print("the kept log head is forgotten; the next contact pins the server's head")


def _row(entry: LogEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "at": entry.at,
        "kind": entry.kind.value,
        "actor": entry.actor,
        "summary": entry.summary(),
        "entry": entry.to_json(),
    }


def register(app: typer.Typer) -> None:
    """Add the `log` command group."""
    app.add_typer(log_app, name="log")
