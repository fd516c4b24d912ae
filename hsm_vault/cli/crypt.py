"""`hsm-vault encrypt`, `decrypt` and `inspect`: files to and from cards and token keys.

Several FILE arguments make a batch: one recipient lookup, one token login, every file.
Encrypting needs no token (unless signing); decrypting logs in once and lets the token unwrap.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hsm_vault.cli import complete
from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    SlotOpt,
    TokenOpt,
    err_console,
    key_reference,
    print_json,
    progress_bar,
    split_token_from_key,
    stderr_is_terminal,
    token_session,
)
from hsm_vault.errors import CardNotFound, HsmVaultError, NoMatchingRecipient, UsageError

if TYPE_CHECKING:
    from hsm_vault.cards import Card, Keyring
    from hsm_vault.envelope import Recipient, Verifier
    from hsm_vault.envelope.recovery import RecoveryPlan


FilesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Input files; '-' or nothing reads stdin.", metavar="[FILE]...", show_default=False
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Output file, or '-' for stdout (one input only).",
        show_default=False,
    ),
]
OutDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--out-dir", help="Write outputs into this folder (batch form).", show_default=False
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary.")]


def _server_fetch() -> tuple[Callable[[str, Keyring], Any] | None, str]:
    """Fetching from the server this client is logged in to (None when not logged in)."""
    from hsm_vault.config import Config

    config = Config.load()
    if not (config.server_url and config.api_token):
        return None, "the server"
    server = config.server_url

    def fetch(ref: str, keyring: Keyring) -> Any:
        from hsm_vault.client import fetch_identity

        err_console.print(f"{ref!r} is not in the keyring: asking {server}")
        return fetch_identity(ref, keyring)

    return fetch, server


def resolve_recipients(refs: list[str]) -> list[Recipient]:
    """--to values (identity, card id or card file) -> envelope recipients."""
    from hsm_vault.card_refs import card_or_fetch
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import recipient_for

    keyring = Keyring()
    recipients = []
    for ref in refs:
        try:
            card = card_or_fetch(ref, keyring)
        except CardNotFound:
            fetch, server = _server_fetch()
            if fetch is None:
                raise
            card = card_or_fetch(ref, keyring, fetch, server=server)
        recipients.append(recipient_for(card))
    return recipients


def policy_recovery(no_recovery: bool) -> RecoveryPlan | None:
    """The recovery holders the pinned server policy requires in every file, or None.

    The holders' cards are verified under the pinned policy (the keyring's copy, else fetched
    from the server). A policy with a recovery rule does not allow --no-recovery.
    """
    from hsm_vault.config import Config
    from hsm_vault.errors import PolicyVerificationError
    from hsm_vault.trust.anchors import PINNED_POLICY_KEY, TrustAnchors
    from hsm_vault.trust.policy import RecoveryCard

    config = Config.load()
    pinned = config.extra.get(PINNED_POLICY_KEY)
    if not (config.app_key_spki and pinned):  # no server policy pinned: nothing to enforce
        return None
    anchors = TrustAnchors.from_pinned(config.app_key_spki, config.app_fingerprint, pinned)
    rule = anchors.policy.body.recovery if anchors.policy else None
    if rule is None:
        return None
    if no_recovery:
        raise UsageError(
            "the server policy requires recovery entries in every file: --no-recovery is not "
            "allowed",
            hint="'hsm-vault policy show' shows the recovery rule; officers change it.",
        )
    assert anchors is not None and anchors.policy is not None
    body = anchors.policy.body
    if isinstance(rule, RecoveryCard):
        card_ids, threshold = [rule.card_id], 1
    else:
        card_ids, threshold = [], rule.threshold
        for name in rule.officers:
            officer = body.officer(name)
            if officer is None:
                raise PolicyVerificationError(f"recovery holder {name!r} is not an officer")
            card_ids.append(officer.card_id)
    from hsm_vault.recovery import recovery_plan

    return recovery_plan(_holder_cards(card_ids, anchors.card_policy()), threshold)


def _holder_cards(card_ids: list[str], trust: Any) -> list[Card]:
    """The recovery holders' cards, verified under `trust`; fetched when the keyring lacks
    them, and refused when revoked."""
    from hsm_vault.cards import Keyring, KeyringStatus, Origin
    from hsm_vault.errors import CardRevoked
    from hsm_vault.trust import verify_card

    keyring = Keyring()
    cards: list[Card] = []
    missing = []
    for card_id in card_ids:
        try:
            entry = keyring.get(card_id)
        except CardNotFound:
            missing.append(card_id)
            continue
        if entry.status is KeyringStatus.REVOKED:
            raise CardRevoked(f"recovery card {card_id[:16]} is revoked: tell your officers")
        verify_card(entry.card, trust)
        cards.append(entry.card)
    if missing:
        from hsm_vault.client import client_from_config

        with client_from_config() as client:
            for card_id in missing:
                verified = client.fetch_card(card_id, trust)
                if verified.revoked:
                    raise CardRevoked(f"recovery card {card_id[:16]} is revoked")
                keyring.add(verified.card, origin=Origin.IMPORTED)
    by_id = {c.id: c for c in cards}
    for card_id in missing:
        by_id[card_id] = keyring.get(card_id).card
    return [by_id[c] for c in card_ids]


def resolve_verifier(ref: str) -> Verifier:
    from hsm_vault.card_refs import card_from_ref
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import verifier_for

    return verifier_for(card_from_ref(ref, Keyring()))


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _inputs(files: list[str] | None) -> list[Path | None]:
    if not files and sys.stdin.isatty():
        # Nothing named and nothing piped in: reading the terminal would wait silently.
        raise UsageError(
            "no input: name a FILE, or pipe the data in",
            hint="e.g. 'hsm-vault encrypt --to alice report.pdf' or '... < report.pdf'; "
            "pass '-' to type the input at the terminal.",
        )
    items = files or ["-"]
    if "-" in items and len(items) > 1:
        raise UsageError("stdin ('-') cannot be part of a batch")
    paths = [None if item == "-" else Path(item) for item in items]
    for path in paths:  # before any PIN prompt or output file
        if path is not None and not path.is_file():
            what = "does not exist" if not path.exists() else "is not a file"
            raise UsageError(f"{path} {what}", hint="Check the path.")
    return paths


def _refuse_terminal(dst: Path | None) -> None:
    if dst is None and sys.stdout.isatty():
        raise UsageError(
            "refusing to write binary output to a terminal",
            hint="Redirect stdout to a file or pipe, or pass -o FILE.",
        )


def _plan(
    sources: list[Path | None],
    output: str | None,
    out_dir: Path | None,
    default: Callable[[Path, Path | None], Path],
) -> list[tuple[Path | None, Path | None]]:
    if output is not None and (len(sources) > 1 or out_dir is not None):
        raise UsageError("-o names one output: use --out-dir for several files")
    if out_dir is not None and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder", hint="Create it first.")
    plan: list[tuple[Path | None, Path | None]] = []
    for src in sources:
        if output is not None:
            plan.append((src, None if output == "-" else Path(output)))
        elif src is None:
            plan.append((None, None))
        else:
            plan.append((src, default(src, out_dir)))
    return plan


def _run_batch(
    plan: list[tuple[Path | None, Path | None]],
    work: Callable[[Path | None, Path | None], Any],
) -> None:
    """Run `work` on each (source, output); report failures per file and fail at the end."""
    from hsm_vault.vault import BatchFailure, batch_failed

    if len(plan) == 1:
        work(*plan[0])
        return
    failures = []
    for src, dst in plan:
        try:
            work(src, dst)
        except HsmVaultError as exc:
            assert src is not None
            failures.append(BatchFailure(src, exc))
            err_console.print(f"[bold red]error:[/] {src}: {exc.message}", markup=True)
    if failures:
        raise batch_failed(failures, len(plan))


def encrypt(
    files: FilesArg = None,
    to: Annotated[
        list[str],
        typer.Option(
            "--to",
            "-r",
            metavar="IDENTITY|CARD_ID|CARD_FILE",
            help="Recipient: an identity, a card id (prefix), or a card file. Repeatable.",
            autocompletion=complete.recipients,
        ),
    ] = [],  # noqa: B006 (typer reads the default)
    output: OutputOpt = None,
    out_dir: OutDirOpt = None,
    force: ForceOpt = False,
    sign_with: Annotated[
        str | None,
        typer.Option(
            "--sign-with",
            help="Sign with this token key (label or pkcs11: URI).",
            show_default=False,
        ),
    ] = None,
    upload: Annotated[
        bool,
        typer.Option(
            "--upload",
            help="Send the ciphertext straight to the server's blob store instead of a local "
            "file (streamed; nothing is written here). The blob is named after -o, or FILE.hsmv.",
        ),
    ] = False,
    no_recovery: Annotated[
        bool,
        typer.Option(
            "--no-recovery",
            help="Leave out the recovery holders (refused when the server policy requires them).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Encrypt FILE (or stdin) to one or more cards; FILE becomes FILE.hsmv.

    Encrypting needs only the recipients' public keys: no token, unless --sign-with. An
    identity that is not in the keyring is fetched from the server you are logged in to.
    Under a server policy with a recovery rule, the file key's shares for the recovery
    holders are added to every file (shown in the summary and by 'inspect').
    """
    from hsm_vault.vault import default_encrypt_output, encrypt_file

    if not to:
        raise UsageError("name at least one recipient with --to", hint="e.g. --to alice")
    sources = _inputs(files)
    recipients = resolve_recipients(to)
    recovery = policy_recovery(no_recovery)
    plan = _plan(sources, output, out_dir, default_encrypt_output)
    if upload:
        plan = [(src, _blob_name(src, dst)) for src, dst in plan]
    else:
        for _, dst in plan:
            _refuse_terminal(dst)

    def run(signer: Any) -> None:
        def one(src: Path | None, dst: Path | None) -> None:
            with progress_bar("encrypting", _size(src), quiet=quiet) as progress:
                if upload:
                    assert dst is not None
                    meta = _encrypt_upload(
                        src, dst.name, recipients, signer, recovery, force, progress
                    )
                    if not quiet:
                        err_console.print(
                            f"encrypted {src or '<stdin>'} -> blob {meta.owner}/{meta.name} "
                            f"({meta.size} bytes)"
                        )
                    return
                encrypt_file(
                    src, dst, recipients, signer, recovery=recovery, force=force, progress=progress
                )
            if dst is not None and not quiet and stderr_is_terminal():
                err_console.print(f"encrypted {src or '<stdin>'} -> {dst}")
            if recovery is not None and not quiet:
                names = ", ".join(h.name or h.key_id.hex()[:16] for h in recovery.holders)
                err_console.print(
                    f"recovery: any {recovery.threshold} of {len(recovery.holders)} ({names}) "
                    "can recover it, as the server policy requires"
                )

        _run_batch(plan, one)

    if sign_with is None:
        run(None)
        return
    from hsm_vault.card_refs import own_card_for
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import TokenSigner

    with token_session(module, split_token_from_key(sign_with, token), pin_file) as session:
        key = session.find_key(sign_with)
        run(TokenSigner(session, key, own_card_for(key.spki_der, Keyring())))


def _blob_name(src: Path | None, dst: Path | None) -> Path:
    if dst is None:
        raise UsageError("name the blob with -o NAME when encrypting stdin with --upload")
    return dst


def _encrypt_upload(
    src: Path | None,
    name: str,
    recipients: list[Recipient],
    signer: Any,
    recovery: RecoveryPlan | None,
    replace: bool,
    progress: Any,
) -> Any:
    """Encrypt straight into an upload: the ciphertext never touches the local disk."""
    from hsm_vault.client import client_from_config
    from hsm_vault.client.blobs import upload_from_writer
    from hsm_vault.vault import encrypt, open_input

    with client_from_config() as client, open_input(src) as source:
        _, meta = upload_from_writer(
            client,
            name,
            lambda out: encrypt(
                source, out, recipients, signer, recovery=recovery, progress=progress
            ),
            replace=replace,
        )
    return meta


def decrypt(
    files: FilesArg = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            "-k",
            help="Use only this token key (label or pkcs11: URI).",
            show_default=False,
        ),
    ] = None,
    slot: SlotOpt = None,
    output: OutputOpt = None,
    out_dir: OutDirOpt = None,
    force: ForceOpt = False,
    verify_from: Annotated[
        str | None,
        typer.Option(
            "--verify-from",
            help="Require a signature by this sender (identity, card id or card file).",
            show_default=False,
            autocompletion=complete.recipients,
        ),
    ] = None,
    from_store: Annotated[
        str | None,
        typer.Option(
            "--from-store",
            metavar="[OWNER/]NAME",
            help="Decrypt a blob from the server's blob store as it downloads (no local "
            "ciphertext). Output: -o, or NAME without .hsmv.",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Decrypt FILE.hsmv (or stdin) with a key on the token; one login for every file.

    Without --token, the token is the one holding your own card's key for the file (from the
    keyring), else the only token there is. Output to a file appears only once everything
    verified. With -o - (stdout), each chunk is written as soon as it verified, and a later
    failure exits non-zero.
    """
    from hsm_vault.card_refs import own_token_for
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import decrypt_file, default_decrypt_output, token_identities

    verifier = resolve_verifier(verify_from) if verify_from else None
    if from_store is not None:
        if files or out_dir is not None:
            raise UsageError("--from-store decrypts one blob: give no FILE and no --out-dir")
        plan: list[tuple[Path | None, Path | None]] = [(None, _store_output(from_store, output))]
    else:
        plan = _plan(_inputs(files), output, out_dir, default_decrypt_output)
    for _, dst in plan:
        _refuse_terminal(dst)
    key = key_reference(key, slot, required=False)
    stdin_header = None
    if from_store is None and plan == [(None, plan[0][1])]:
        # stdin: read its header first, so the token is chosen as for a named file.
        from hsm_vault.envelope import read_header
        from hsm_vault.vault import open_input

        with open_input(None) as stdin:
            stdin_header = read_header(stdin)
    chosen = split_token_from_key(key, token)
    if chosen is None:
        wanted = (
            {r.key_id for r in stdin_header.recipients}
            if stdin_header is not None
            else _recipients_of(from_store, [src for src, _ in plan if src])
        )
        chosen = own_token_for(wanted, Keyring())
    with token_session(module, chosen, pin_file) as session:
        identities = token_identities(session, key)

        def one(src: Path | None, dst: Path | None) -> None:
            try:
                decrypt_one(src, dst)
            except NoMatchingRecipient as exc:
                if stdin_header is not None and src is None:
                    wanted = {r.key_id for r in stdin_header.recipients}
                else:
                    wanted = _recipients_of(from_store, [src] if src else [])
                raise _no_recipient(exc, wanted, chosen) from None

        def decrypt_one(src: Path | None, dst: Path | None) -> None:
            with progress_bar("decrypting", _size(src), quiet=quiet) as progress:
                if from_store is not None:
                    result = _decrypt_download(
                        from_store, dst, identities, verifier, force, progress
                    )
                elif stdin_header is not None:
                    from hsm_vault.vault import decrypt_stream, open_input

                    with open_input(None) as stdin:
                        result = decrypt_stream(
                            stdin,
                            dst,
                            identities,
                            verifier,
                            force=force,
                            progress=progress,
                            header=stdin_header,
                        )
                else:
                    result = decrypt_file(
                        src, dst, identities, verifier, force=force, progress=progress
                    )
            if result.signer is not None:
                err_console.print(
                    f"verified: {src or '<stdin>'} was signed by {result.signer.name} "
                    f"(card {result.signer.card_id.hex()[:16]})"
                )
            elif dst is not None and not quiet and stderr_is_terminal():
                err_console.print(f"decrypted {src} -> {dst}")

        _run_batch(plan, one)


def _store_output(name: str, output: str | None) -> Path | None:
    from hsm_vault.vault import SUFFIX

    if output is not None:
        return None if output == "-" else Path(output)
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(SUFFIX) or base == SUFFIX:
        raise UsageError(
            f"{name} does not end in {SUFFIX}: say where the plaintext goes", hint="Pass -o OUT."
        )
    return Path(base[: -len(SUFFIX)])


def _decrypt_download(
    name: str, dst: Path | None, identities: Any, verifier: Any, force: bool, progress: Any
) -> Any:
    """Decrypt a blob as it streams in; the download's SHA-256 is checked at its end too."""
    from hsm_vault.client import client_from_config
    from hsm_vault.client.blobs import open_blob_reader
    from hsm_vault.vault import decrypt_stream

    with client_from_config() as client, open_blob_reader(client, name) as source:
        return decrypt_stream(source, dst, identities, verifier, force=force, progress=progress)


def _recipients_of(from_store: str | None, sources: list[Path]) -> set[bytes]:
    """The key ids the inputs are encrypted to, read from their headers (or the blob's
    metadata); an empty set when that fails (the decrypt itself then says what is wrong)."""
    from hsm_vault.vault import recipient_key_ids

    wanted: set[bytes] = set()
    try:
        if from_store is not None:
            from hsm_vault.client import client_from_config
            from hsm_vault.client.blobs import blob_meta

            with client_from_config() as client:
                return {bytes.fromhex(k) for k in blob_meta(client, from_store).recipients}
        for src in sources:
            wanted |= recipient_key_ids(src)
    except (HsmVaultError, ValueError):
        return set()
    return wanted


def _no_recipient(
    exc: NoMatchingRecipient, wanted: set[bytes], token: str | None
) -> NoMatchingRecipient:
    """Say who the file is for (by identity where the keyring knows the key), and which
    token holds one of those keys when it is not the token that was opened."""
    from hsm_vault.cards import Keyring, Origin
    from hsm_vault.token.uri import parse_uri

    if not wanted:
        return exc
    names: dict[bytes, str] = {}
    elsewhere: set[str] = set()
    for entry in Keyring().entries():
        if entry.card.key_id in wanted:
            names.setdefault(entry.card.key_id, entry.card.identity)
            if entry.origin is Origin.OWN and entry.key_uri:
                label = parse_uri(entry.key_uri).token
                if label and label != token:
                    elsewhere.add(label)
    shown = sorted(names.get(k, k.hex()[:16] + "..") for k in wanted)
    hint = "Ask the sender to encrypt to one of your cards (hsm-vault card list)."
    if elsewhere:
        hint = (
            f"Your recipient key is on token {', '.join(sorted(elsewhere))}: pass --token "
            + (sorted(elsewhere)[0])
        )
    return NoMatchingRecipient(
        f"none of this token's keys is a recipient of this file; it is for: {', '.join(shown)}",
        hint=hint + ".",
    )


def inspect(
    file: Annotated[Path, typer.Argument(help="An hsm-vault file.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Show a file's recipients, sizes and signer, without a token and without decrypting."""
    from hsm_vault.cards import Keyring
    from hsm_vault.envelope.format import ECRecipientEntry, RecipientEntry
    from hsm_vault.vault import inspect_file

    header, plaintext_size = inspect_file(file)
    known: dict[bytes, str] = {}
    cards: dict[str, str] = {}
    with contextlib.suppress(HsmVaultError, OSError):
        for entry in Keyring().entries():
            known[entry.card.key_id] = entry.card.identity
            cards[entry.card.id] = entry.card.identity

    def describe(entry: RecipientEntry) -> dict[str, Any]:
        return {
            "key_id": entry.key_id.hex(),
            "key_type": entry.key_type.value,
            "wrap": "ecdh-x963kdf-sha256-aes256-wrap"
            if isinstance(entry, ECRecipientEntry)
            else f"rsa-oaep-{entry.oaep_hash}",
            "identity": known.get(entry.key_id),
        }

    recipients = [describe(entry) for entry in header.recipients]
    recovery: dict[str, Any] | None = None
    if header.recovery is not None:
        recovery = {
            "threshold": header.recovery.threshold,
            "shares": [
                {"index": i + 1, **describe(entry)}
                for i, entry in enumerate(header.recovery.shares)
            ],
        }
    signer = None
    if header.signer is not None:
        signer = {
            "card_id": header.signer.card_id.hex(),
            "key_id": header.signer.key_id.hex(),
            "algorithm": header.signer.algorithm.value,
            "identity": cards.get(header.signer.card_id.hex()),
        }
    info = {
        "file": str(file),
        "version": header.version,
        "header_size": len(header.raw),
        "plaintext_size": plaintext_size,
        "chunk_size": header.payload.chunk_size,
        "payload": header.payload.algorithm,
        "recipients": recipients,
        "signer": signer,
        "recovery": recovery,
    }
    if plaintext_size is None:
        err_console.print(
            f"[yellow]warning:[/] {file} is truncated or damaged: its length is not that of a "
            "whole hsm-vault file, and decrypting it will fail",
            markup=True,
        )
    if json_out:
        print_json(info)
        return
    out = typer.echo
    out(f"file:       {file}")
    out(f"format:     hsm-vault v{header.version}, " + header.payload.algorithm)
    if plaintext_size is None:
        out("size:       unknown: the file is truncated or damaged")
    else:
        out(
            f"size:       {plaintext_size} bytes of plaintext (chunks of "
            f"{header.payload.chunk_size}; from the file's length, verified only by decrypt)"
        )
    out(f"recipients: {len(recipients)}")
    for r in recipients:
        name = f"  {r['identity']}" if r["identity"] else ""
        out(f"  {r['key_id']}  {r['key_type']:9} {r['wrap']}{name}")
    if recovery is not None:
        shares = recovery["shares"]
        out(f"recovery:   any {recovery['threshold']} of {len(shares)} share holders")
        for r in shares:
            name = f"  {r['identity']}" if r["identity"] else ""
            out(f"  {r['index']}: {r['key_id']}  {r['key_type']:9} {r['wrap']}{name}")
    if signer is None:
        out("signer:     none")
    else:
        name = f" ({signer['identity']})" if signer["identity"] else ""
        out(f"signer:     card {signer['card_id']}{name}, {signer['algorithm']} (not verified)")


def register(app: typer.Typer) -> None:
    """Add encrypt, decrypt and inspect as top-level commands."""
    app.command("encrypt")(encrypt)
    app.command("decrypt")(decrypt)
    app.command("inspect")(inspect)
