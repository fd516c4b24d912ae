"""`hsm-vault encrypt`, `decrypt` and `inspect`: files to and from cards and token keys.

Several FILE arguments make a batch: one recipient lookup, one token login, every file.
Encrypting needs no token (unless signing); decrypting logs in once and lets the token unwrap.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    err_console,
    print_json,
    token_session,
)
from hsm_vault.errors import CardNotFound, HsmVaultError, UsageError

if TYPE_CHECKING:
    from hsm_vault.cards import Card, Keyring
    from hsm_vault.envelope import Recipient, Verifier

PROGRESS_THRESHOLD = 16 << 20

FilesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Input files; '-' or nothing reads stdin.", metavar="FILE", show_default=False
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


def _card_from_ref(ref: str, keyring: Keyring) -> Card:
    """A card from a card file (one-line export, self signature checked) or the keyring."""
    from hsm_vault.cards import Card, TrustPolicy, verify_card

    path = Path(ref)
    if ("/" in ref or ref.endswith((".card", ".txt"))) and path.is_file():
        card = Card.from_text(path.read_text().strip())
        verify_card(card, TrustPolicy.self_only())
        revocation = keyring.revocation(card.id)
        if revocation is not None:
            from hsm_vault.errors import CardRevoked

            raise CardRevoked(f"card {card.id[:16]} ({card.identity}) is revoked")
        return card
    return keyring.resolve(ref).card


def resolve_recipients(refs: list[str]) -> list[Recipient]:
    """--to values (identity, card id or card file) -> envelope recipients."""
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import recipient_for

    keyring = Keyring()
    return [recipient_for(_card_from_ref(ref, keyring)) for ref in refs]


def resolve_verifier(ref: str) -> Verifier:
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import verifier_for

    return verifier_for(_card_from_ref(ref, Keyring()))


def _own_card_for(spki_der: bytes) -> Card:
    """The signing key's card: a valid card for that key, preferring own and newest."""
    from hsm_vault.cards import Keyring
    from hsm_vault.envelope import key_id_of

    key_id = key_id_of(spki_der)
    found = [
        entry
        for entry in Keyring().entries()
        if entry.card.key_id == key_id and entry.status == "valid"
    ]
    if not found:
        raise CardNotFound(
            "no valid card in the keyring for the signing key",
            hint="Create one with 'hsm-vault card create' for that key.",
        )
    best = max(found, key=lambda e: (e.origin == "own", e.card.created_at))
    return best.card


@contextlib.contextmanager
def _progress(label: str, total: int | None, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal for large inputs; nothing otherwise."""
    if quiet or total is None or total < PROGRESS_THRESHOLD or not err_console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _inputs(files: list[str] | None) -> list[Path | None]:
    items = files or ["-"]
    if "-" in items and len(items) > 1:
        raise UsageError("stdin ('-') cannot be part of a batch")
    return [None if item == "-" else Path(item) for item in items]


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
    quiet: QuietOpt = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Encrypt FILE (or stdin) to one or more cards; FILE becomes FILE.hsmv.

    Encrypting needs only the recipients' public keys: no token, unless --sign-with.
    """
    from hsm_vault.vault import default_encrypt_output, encrypt_file

    if not to:
        raise UsageError("name at least one recipient with --to", hint="e.g. --to alice")
    recipients = resolve_recipients(to)
    plan = _plan(_inputs(files), output, out_dir, default_encrypt_output)
    for _, dst in plan:
        _refuse_terminal(dst)

    def run(signer: Any) -> None:
        def one(src: Path | None, dst: Path | None) -> None:
            with _progress("encrypting", _size(src), quiet) as progress:
                encrypt_file(src, dst, recipients, signer, force=force, progress=progress)
            if dst is not None and not quiet and err_console.is_terminal:
                err_console.print(f"encrypted {src or '<stdin>'} -> {dst}")

        _run_batch(plan, one)

    if sign_with is None:
        run(None)
        return
    from hsm_vault.vault import TokenSigner

    with token_session(module, token or _token_of(sign_with), pin_file) as session:
        key = session.find_key(sign_with)
        run(TokenSigner(session, key, _own_card_for(key.spki_der)))


def _token_of(ref: str | None) -> str | None:
    """A pkcs11: URI names its token; pass it on so the right token is opened."""
    return ref if ref and ref.lower().startswith("pkcs11:") else None


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
    output: OutputOpt = None,
    out_dir: OutDirOpt = None,
    force: ForceOpt = False,
    verify_from: Annotated[
        str | None,
        typer.Option(
            "--verify-from",
            help="Require a signature by this sender (identity, card id or card file).",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Decrypt FILE.hsmv (or stdin) with a key on the token; one login for every file.

    Output to a file appears only once everything verified. With -o - (stdout), each chunk
    is written as soon as it verified, and a later failure exits non-zero.
    """
    from hsm_vault.vault import decrypt_file, default_decrypt_output, token_identities

    verifier = resolve_verifier(verify_from) if verify_from else None
    plan = _plan(_inputs(files), output, out_dir, default_decrypt_output)
    for _, dst in plan:
        _refuse_terminal(dst)
    with token_session(module, token or _token_of(key), pin_file) as session:
        identities = token_identities(session, key)

        def one(src: Path | None, dst: Path | None) -> None:
            with _progress("decrypting", _size(src), quiet) as progress:
                result = decrypt_file(
                    src, dst, identities, verifier, force=force, progress=progress
                )
            if result.signer is not None:
                err_console.print(
                    f"verified: {src or '<stdin>'} was signed by {result.signer.name} "
                    f"(card {result.signer.card_id.hex()[:16]})"
                )
            elif dst is not None and not quiet and err_console.is_terminal:
                err_console.print(f"decrypted {src} -> {dst}")

        _run_batch(plan, one)


def inspect(
    file: Annotated[Path, typer.Argument(help="An hsm-vault file.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Show a file's recipients, sizes and signer, without a token and without decrypting."""
    from hsm_vault.cards import Keyring
    from hsm_vault.vault import inspect_file

    header, plaintext_size = inspect_file(file)
    known: dict[bytes, str] = {}
    cards: dict[str, str] = {}
    with contextlib.suppress(HsmVaultError, OSError):
        for entry in Keyring().entries():
            known[entry.card.key_id] = entry.card.identity
            cards[entry.card.id] = entry.card.identity
    recipients = [
        {
            "key_id": entry.key_id.hex(),
            "key_type": entry.key_type.value,
            "wrap": "ecdh-x963kdf-sha256-aes256-wrap"
            if entry.ephemeral_point is not None
            else f"rsa-oaep-{entry.oaep_hash}",
            "identity": known.get(entry.key_id),
        }
        for entry in header.recipients
    ]
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
        "version": 1,
        "header_size": len(header.raw),
        "plaintext_size": plaintext_size,
        "chunk_size": header.payload.chunk_size,
        "payload": header.payload.algorithm,
        "recipients": recipients,
        "signer": signer,
    }
    if json_out:
        print_json(info)
        return
    out = typer.echo
    out(f"file:       {file}")
    out("format:     hsm-vault v1, " + header.payload.algorithm)
    out(f"size:       {plaintext_size} bytes of plaintext (chunks of {header.payload.chunk_size})")
    out(f"recipients: {len(recipients)}")
    for r in recipients:
        name = f"  {r['identity']}" if r["identity"] else ""
        out(f"  {r['key_id']}  {r['key_type']:9} {r['wrap']}{name}")
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
