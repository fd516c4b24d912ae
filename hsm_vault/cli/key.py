"""`hsm-vault key ...`: generate, list, show, export the public half of, and delete token keys.

There is deliberately no command that exports a private key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hsm_vault.algorithms import KeyType
from hsm_vault.cli.common import (
    AllowDefaultManagementKeyOpt,
    JsonOpt,
    ManagementKeyFileOpt,
    ModuleOpt,
    PinFileOpt,
    SlotOpt,
    TokenOpt,
    YesOpt,
    console,
    key_reference,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.errors import FileExistsRefused, TokenCannot, UsageError

key_app = typer.Typer(
    help="Manage key pairs on a token. Private keys are made on the token and never leave it.",
    no_args_is_help=True,
)

KeyArg = Annotated[
    str | None,
    typer.Argument(
        help="Key label, or a PKCS#11 URI (pkcs11:token=T;object=L); on a PIV token also "
        "pkcs11:id=%03, or --slot 9d instead.",
        show_default=False,
    ),
]
PinPolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--pin-policy",
        help="PIV: when the key wants the PIN (never, once, always). ykcs11 and OpenSC cannot "
        "set it: the command says how to with yubico-piv-tool.",
        show_default=False,
    ),
]
TouchPolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--touch-policy",
        help="PIV: when the key wants a touch (never, always, cached); see --pin-policy.",
        show_default=False,
    ),
]


def key_summary(key: Any) -> dict[str, Any]:
    """A key as plain data, for --json and for `key show`."""
    return {
        "label": key.label,
        "id": key.key_id.hex(),
        "type": str(key.key_type),
        "bits": key.key_type.bits,
        "uri": key.uri,
        "token": key.token.label,
        "fingerprint_sha256": key.fingerprint,
        "capabilities": list(key.capabilities),
        "local_not_reported": key.local_not_reported,
        "slot": key.slot,
        "attributes": {
            "local": key.local,
            "never_extractable": key.never_extractable,
            "always_sensitive": key.always_sensitive,
            "sensitive": key.sensitive,
            "extractable": key.extractable,
        },
    }


@key_app.command("generate")
def generate(
    label: Annotated[
        str | None,
        typer.Argument(
            help="Label for the new key (unique on the token). PIV tokens fix the label "
            "themselves and take none.",
            show_default=False,
        ),
    ] = None,
    key_type: Annotated[
        KeyType | None,
        typer.Option(
            "--type",
            help="Key type (default: the best type the token can both generate and decrypt "
            "with: ec-p256 where it can; 'hsm-vault token info' shows the choice).",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    slot: Annotated[
        str | None,
        typer.Option(
            "--slot",
            help="PIV: the slot for the key (default: the first free of 9d, 82-95).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="PIV: overwrite the key in an occupied slot (destroys it)."),
    ] = False,
    pin_policy: PinPolicyOpt = None,
    touch_policy: TouchPolicyOpt = None,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    management_key_file: ManagementKeyFileOpt = None,
    allow_default_management_key: AllowDefaultManagementKeyOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate a key pair ON the token: sensitive, non-extractable, with a unique id.

    The token's CKA_LOCAL, CKA_NEVER_EXTRACTABLE and CKA_ALWAYS_SENSITIVE are read back; a key
    the token did not protect is deleted again and the command fails. On a PIV token (YubiKey)
    the key goes to a free slot and the management key is asked for instead of the PIN.
    """
    with token_session(
        module,
        token,
        pin_file,
        management_key_file=management_key_file,
        manage_keys=True,
        allow_default_management_key=allow_default_management_key,
    ) as ts:
        _check_piv_options(ts, label, slot, force, pin_policy, touch_policy, key_type)
        chosen = key_type
        if chosen is None:
            chosen = ts.capabilities().best_key_type()
            if chosen is None:
                raise TokenCannot(
                    f"token {ts.info.label!r} ({ts.info.model_name}) cannot decrypt with any key "
                    "type it generates",
                    hint="Run 'hsm-vault token info' for the reasons; use another token.",
                )
            if not json_out:
                console.print(
                    f"key type: {chosen} (the best this token generates and decrypts with)"
                )
        if not json_out and chosen is KeyType.RSA_4096:
            console.print("generating an RSA-4096 key on the token; this can take a while...")
        key = ts.generate_key(label, chosen, slot=slot, force=force)
    if json_out:
        print_json(key_summary(key))
        return
    console.print(f"generated {key.key_type} key {key.label!r} on token {key.token.label!r}")
    if key.slot:
        console.print(f"  slot:        {key.slot} (the label is the module's own)")
    console.print(f"  uri:         {key.uri}")
    console.print(f"  fingerprint: {key.fingerprint}")
    if key.local_not_reported:
        console.print(
            "  never extractable, always sensitive: yes; local: not reported by the token "
            "(allowed for this model in the config)"
        )
    else:
        console.print("  local, never extractable, always sensitive: yes")


def _check_piv_options(
    ts: Any,
    label: str | None,
    slot: str | None,
    force: bool,
    pin_policy: str | None,
    touch_policy: str | None,
    key_type: KeyType | None,
) -> None:
    """Refuse what the token cannot do before anything is made."""
    from hsm_vault.token import piv

    for given, allowed, name in (
        (pin_policy, piv.PIN_POLICIES, "--pin-policy"),
        (touch_policy, piv.TOUCH_POLICIES, "--touch-policy"),
    ):
        if given is not None and given not in allowed:
            raise UsageError(f"{name} takes one of {', '.join(allowed)}, not {given!r}")
    if not ts.piv:
        if slot is not None or force or pin_policy or touch_policy:
            raise UsageError(
                f"--slot, --force, --pin-policy and --touch-policy are for PIV tokens; token "
                f"{ts.info.label!r} ({ts.info.model_name}) is not one"
            )
        if not label:
            raise UsageError("name the new key: hsm-vault key generate LABEL")
        return
    if slot is not None:
        piv.slot_named(slot)
    if pin_policy not in (None, "default") or touch_policy not in (None, "default"):
        raise TokenCannot(
            f"token {ts.info.label!r} ({ts.info.model_name}) cannot set a key's PIN or touch "
            f"policy: {ts.capabilities().why_not('policy')}",
            hint=piv.policy_hint(slot or "9d"),
        )
    if label:
        console.print(f"note: PIV tokens name their keys themselves; the label {label!r} is unused")


@key_app.command("list")
def list_keys(
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the key pairs on a token."""
    with token_session(module, token, pin_file) as ts:
        keys = ts.keys()
        label = ts.info.label
    if json_out:
        print_json([key_summary(k) for k in keys])
        return
    if not keys:
        console.print(f"no keys on token {label!r}; make one with 'hsm-vault key generate LABEL'")
        return
    table = Table(title=f"keys on token {label!r}", title_justify="left")
    for column in ("label", "type", "id", "protected", "fingerprint (sha256)"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.label,
            str(k.key_type),
            k.key_id.hex(),
            "yes" if k.protected else "NO",
            k.fingerprint[:16],
        )
    console.print(table)


@key_app.command("show")
def show(
    key: KeyArg = None,
    slot: SlotOpt = None,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a key: type, size, id, URI, protection attributes and SHA-256 fingerprint; on a
    YubiKey also what its attestation says (or why it does not verify)."""
    ref = key_reference(key, slot)
    with token_session(module, split_token_from_key(ref, token), pin_file) as ts:
        info = ts.find_key(ref)
        certificates = ts.attestation(info)
    summary = key_summary(info)
    summary["attestation"] = _attestation_summary(info, certificates)
    if json_out:
        print_json(summary)
        return
    for name in ("label", "type", "bits", "id", "uri", "token", "fingerprint_sha256"):
        console.print(f"{name + ':':<20}{summary[name]}")
    if info.slot:
        console.print(f"{'slot:':<20}{info.slot}")
    attested = summary["attestation"]
    if attested.get("attested"):
        console.print(
            f"{'attested:':<20}yes: YubiKey #{attested['serial']}, firmware "
            f"{attested['firmware']}, PIN policy {attested['pin_policy']}, touch policy "
            f"{attested['touch_policy']}, {attested['form_factor']} (root: {attested['root']})"
        )
    else:
        console.print(f"{'attested:':<20}no ({attested['reason']})")
    console.print(f"{'capabilities:':<20}{', '.join(info.capabilities)}")
    for name, value in summary["attributes"].items():
        console.print(f"{name + ':':<20}{'yes' if value else 'no'}")


def _attestation_summary(info: Any, certificates: tuple[bytes, bytes] | None) -> dict[str, Any]:
    from hsm_vault.attestation import verify_attestation
    from hsm_vault.config import attestation_roots
    from hsm_vault.errors import AttestationError

    if certificates is None:
        return {"attested": False, "reason": "the token offers no attestation for this key"}
    try:
        found = verify_attestation(*certificates, info.spki_der, attestation_roots())
    except AttestationError as exc:
        return {"attested": False, "reason": exc.message}
    return {"attested": True, **found.as_json()}


@key_app.command("export-public")
def export_public(
    key: KeyArg = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")
    ] = None,
    der: Annotated[bool, typer.Option("--der", help="DER instead of PEM.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    slot: SlotOpt = None,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Export the PUBLIC key as a SubjectPublicKeyInfo (PEM, or DER with --der)."""
    ref = key_reference(key, slot)
    if der and out is None:
        raise UsageError("DER is binary: use --out FILE with --der")
    if out is not None and out.exists() and not force:
        raise FileExistsRefused(f"{out} exists")
    with token_session(module, split_token_from_key(ref, token), pin_file) as ts:
        info = ts.find_key(ref)
    data = info.spki_der if der else info.public_pem()
    if out is None:
        typer.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)
        console.print(f"wrote the public key of {info.label!r} to {out}")


@key_app.command("delete")
def delete(
    key: KeyArg = None,
    slot: SlotOpt = None,
    yes: YesOpt = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    management_key_file: ManagementKeyFileOpt = None,
    allow_default_management_key: AllowDefaultManagementKeyOpt = False,
) -> None:
    """Delete a key pair from the token. There is no undo: files encrypted to it are lost.

    On a PIV token this needs the management key, and the slot is overwritten with a fresh
    key nobody uses (PIV cannot empty a slot), so the old key is gone for good.
    """
    ref = key_reference(key, slot)
    with token_session(
        module,
        split_token_from_key(ref, token),
        pin_file,
        management_key_file=management_key_file,
        manage_keys=True,
        allow_default_management_key=allow_default_management_key,
    ) as ts:
        info = ts.find_key(ref)
        if not yes and not typer.confirm(
            f"Delete key {info.label!r} ({info.key_type}, {info.fingerprint[:16]}) from token "
            f"{info.token.label!r}? Files encrypted to it can no longer be decrypted",
            default=False,
        ):
            raise typer.Exit(1)
        ts.delete_key(info)
    console.print(f"deleted key {info.label!r} from token {info.token.label!r}")
    if info.slot:
        console.print(
            f"slot {info.slot} now holds a fresh key that nothing uses (PIV cannot empty a slot)"
        )


def register(app: typer.Typer) -> None:
    """Add `key` to the application."""
    app.add_typer(key_app, name="key")
