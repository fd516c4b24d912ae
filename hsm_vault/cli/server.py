"""`hsm-vault server ...`: set up and run the server, and manage accounts on the server host.

These commands work on the server's data folder directly (they are run on the server host by
its operator); users and officers work through the API with `login`, `card ...`, `store ...`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hsm_vault.algorithms import KeyType
from hsm_vault.cli.common import JsonOpt, ModuleOpt, console, err_console, print_json
from hsm_vault.config import data_dir as default_data_root
from hsm_vault.errors import UsageError
from hsm_vault.server.settings import SERVER_PIN_ENV, ServerSettings

server_app = typer.Typer(
    name="server",
    help="Set up and run the hsm-vault server; manage accounts on the server host.",
    no_args_is_help=True,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import sessionmaker

DATA_ENV = "HSM_VAULT_SERVER_DATA"


def _default_data() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else default_data_root() / "server"


DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help=f"The server's data folder (default: ${DATA_ENV}, else the user data folder).",
        show_default=False,
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/db "
        "(default: SQLite in the data folder).",
        show_default=False,
    ),
]
ServerPinFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--pin-file",
        help=f"File holding the server token's PIN (else ${SERVER_PIN_ENV} or $HSM_VAULT_PIN).",
        show_default=False,
    ),
]


def _load(data: Path | None, **overrides: object) -> ServerSettings:
    folder = (data or _default_data()).expanduser()
    return ServerSettings.load(folder).with_overrides(**overrides)


@server_app.command("init")
def init(
    data: DataOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", "-t", help="The server's token (label or pkcs11: URI). [default: server]"
        ),
    ] = None,
    app_key: Annotated[
        str | None,
        typer.Option(
            "--app-key",
            help="Label (or pkcs11: URI) of the application key. [default: hsm-vault-app]",
        ),
    ] = None,
    key_type: Annotated[
        KeyType, typer.Option("--key-type", help="Type of a newly generated application key.")
    ] = KeyType.EC_P256,
    module: ModuleOpt = None,
    pin_file: ServerPinFileOpt = None,
    database_url: DatabaseOpt = None,
    auto_approve: Annotated[
        bool | None,
        typer.Option(
            "--auto-approve/--no-auto-approve",
            help="Approve published cards at once. [default: no]",
            show_default=False,
        ),
    ] = None,
    token_days: Annotated[
        int | None,
        typer.Option("--token-days", min=1, help="Lifetime of API tokens in days. [default: 30]"),
    ] = None,
    code_hours: Annotated[
        int | None,
        typer.Option(
            "--code-hours", min=1, help="Lifetime of enrolment codes in hours. [default: 168]"
        ),
    ] = None,
    auth_failures: Annotated[
        int | None,
        typer.Option(
            "--auth-failures",
            min=1,
            help="Failed logins allowed per address or user in 15 minutes. [default: 10]",
        ),
    ] = None,
    blob_store: Annotated[
        str | None,
        typer.Option(
            "--blob-store",
            help="Where blobs go: file:///PATH, or s3://BUCKET/PREFIX?endpoint_url=URL&region=R "
            "for an S3-compatible bucket. [default: the folder blobs/ in the data folder]",
        ),
    ] = None,
    max_blob_mib: Annotated[
        int | None,
        typer.Option(
            "--max-blob-mib", min=1, help="Largest blob accepted, in MiB. [default: 4096]"
        ),
    ] = None,
    quota_mib: Annotated[
        int | None,
        typer.Option("--quota-mib", min=1, help="Storage per user, in MiB. [default: 20480]"),
    ] = None,
    approvals: Annotated[
        int | None,
        typer.Option(
            "--approvals",
            min=0,
            max=16,
            help="Officer approvals (signed on the officers' own tokens) each card needs, in "
            "the signed server policy; 0 lets the application key alone vouch for cards. "
            "[default: 1; 0 with --auto-approve]",
            show_default=False,
        ),
    ] = None,
    require_attestation: Annotated[
        bool,
        typer.Option(
            "--require-attestation",
            help="The signed policy requires key attestation: the server publishes only cards "
            "whose key a device attested (a YubiKey), and clients refuse the others.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create the data folder, the database and the application key on the server's token.

    Running it again on an existing folder keeps the data and the settings, changes only the
    options given, and brings the database schema up to date. Prints the application key's
    fingerprint: give it to users out of band so they can check it at login. Writes the
    first signed server policy (`--approvals`); officers are then named with `add-officer`.
    """
    from hsm_vault.server.appkey import ensure_application_key
    from hsm_vault.server.db import make_engine, migrate_to_head, schema_revision

    if auto_approve and approvals:
        raise UsageError(
            "--auto-approve cannot give cards officer approvals",
            hint="Use --approvals 0 with --auto-approve, or leave auto-approve off.",
        )
    if approvals is None and auto_approve:
        approvals = 0

    folder = (data or _default_data()).expanduser()
    if (folder / "server.json").exists():
        settings = ServerSettings.load(folder)
    else:
        settings = ServerSettings(data_dir=folder)
    settings = settings.with_overrides(
        token=token,
        app_key=app_key,
        module=module,
        pin_file=pin_file.resolve() if pin_file else None,
        database_url=database_url,
        auto_approve=auto_approve,
        api_token_ttl_seconds=token_days * 86400 if token_days else None,
        enrolment_ttl_seconds=code_hours * 3600 if code_hours else None,
        auth_failures_allowed=auth_failures,
    )
    blob_settings = {
        name: value
        for name, value in (
            ("store", blob_store),
            ("max_blob_bytes", max_blob_mib * 2**20 if max_blob_mib else None),
            ("quota_bytes", quota_mib * 2**20 if quota_mib else None),
        )
        if value is not None
    }
    if blob_settings:
        extra = dict(settings.extra or {})
        extra["blobs"] = {**(extra.get("blobs") or {}), **blob_settings}
        settings = replace(settings, extra=extra)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info, created = ensure_application_key(settings, key_type)
    engine = make_engine(settings.effective_database_url)
    try:
        migrate_to_head(engine)
        revision = schema_revision(engine)
        policy = _init_policy(settings, engine, approvals, require_attestation or None)
    finally:
        engine.dispose()
    settings.save()
    if json_out:
        print_json(
            {
                "data_dir": str(folder),
                "app_key_uri": info.uri,
                "app_key_created": created,
                "fingerprint": info.fingerprint,
                "algorithm": info.algorithm.value,
                "schema_revision": revision,
                "policy_serial": policy.serial,
                "approvals": policy.body.approvals,
                "require_attestation": policy.body.require_attestation,
            }
        )
        return
    console.print(f"data folder:      {folder}")
    console.print(f"database:         schema {revision}")
    verb = "generated" if created else "found"
    console.print(f"application key:  {verb} {info.uri} ({info.key_type.value})")
    console.print(f"fingerprint:      {info.fingerprint}")
    console.print(
        f"policy:           serial {policy.serial}, {policy.body.approvals} officer approval(s) "
        f"per card, {len(policy.body.officers)} officer(s)"
        + (", key attestation required" if policy.body.require_attestation else "")
    )
    console.print("Give this fingerprint to users out of band: 'hsm-vault login' shows it.")
    if len(policy.body.officers) < policy.body.approvals:
        console.print("Name the first officers with 'hsm-vault server add-officer NAME'.")


def _init_policy(
    settings: ServerSettings,
    engine: Engine,
    approvals: int | None,
    require_attestation: bool | None,
) -> Any:
    """Write the first signed policy, or change its rules during the bootstrap."""
    from hsm_vault.server.appkey import open_application_key
    from hsm_vault.server.approvals import init_policy
    from hsm_vault.server.db import make_sessionmaker

    with open_application_key(settings) as app_key, make_sessionmaker(engine)() as db:
        policy = init_policy(db, app_key, approvals, require_attestation)
        db.commit()
    return policy


@server_app.command("run")
def run(
    data: DataOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 8443,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate chain for HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key for HTTPS.")
    ] = None,
    database_url: DatabaseOpt = None,
    pin_file: ServerPinFileOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Serve the API (HTTP on loopback by default; give --tls-cert/--tls-key elsewhere).

    The database schema is upgraded to the newest version at start-up, and one session on
    the server's token stays open while the server runs.
    """
    import uvicorn

    from hsm_vault.server.app import create_app, open_resources

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key, or neither")
    from hsm_vault.client import is_loopback

    if tls_cert is None and not is_loopback(host):
        err_console.print(
            f"warning: serving plain HTTP on {host}: API tokens cross the network in clear; "
            "use --tls-cert/--tls-key or a TLS-terminating proxy."
        )
    settings = _load(
        data, database_url=database_url, pin_file=pin_file.resolve() if pin_file else None
    )
    with open_resources(settings) as resources:
        scheme = "https" if tls_cert else "http"
        err_console.print(
            f"hsm-vault server on {scheme}://{host}:{port}  "
            f"application key {resources.app_key.info.fingerprint}"
        )
        uvicorn.run(
            create_app(settings, resources),
            host=host,
            port=port,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            log_level=log_level,
            server_header=False,
        )


def _open_db(settings: ServerSettings) -> tuple[Engine, sessionmaker[Any]]:
    from hsm_vault.server.db import make_engine, make_sessionmaker, migrate_to_head

    engine = make_engine(settings.effective_database_url)
    migrate_to_head(engine)
    return engine, make_sessionmaker(engine)


def _print_code(name: str, role: str, identity: str, code: str, json_out: bool) -> None:
    if json_out:
        print_json({"username": name, "role": role, "identity": identity, "enrolment_code": code})
        return
    console.print(f"user {name} ({role}, identity {identity})")
    console.print(f"enrolment code: {code}")
    console.print(
        "Give the code to the user privately; it works once. They run: "
        f"hsm-vault login --server URL --user {name}"
    )


@server_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="The new account's user name.")],
    role: Annotated[str, typer.Option("--role", help="user, officer or admin.")] = "user",
    identity: Annotated[
        str | None,
        typer.Option("--identity", help="The card identity it may publish (default: NAME)."),
    ] = None,
    data: DataOpt = None,
    database_url: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an account and print its one-time enrolment code."""
    from hsm_vault.server.accounts import create_user
    from hsm_vault.server.db import Role

    try:
        chosen = Role(role)
    except ValueError:
        raise UsageError(f"unknown role {role!r}: use user, officer or admin") from None
    settings = _load(data, database_url=database_url)
    engine, sessions = _open_db(settings)
    try:
        with sessions() as db:
            user, code = create_user(db, settings, name, chosen, identity)
            _print_code(user.name, user.role, user.identity, code, json_out)
    finally:
        engine.dispose()


@server_app.command("enrol-code")
def enrol_code(
    name: Annotated[str, typer.Argument(help="An existing user name.")],
    data: DataOpt = None,
    database_url: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print a fresh one-time enrolment code for an existing account (e.g. after logout)."""
    from hsm_vault.server.accounts import find_user, new_code_for

    settings = _load(data, database_url=database_url)
    engine, sessions = _open_db(settings)
    try:
        with sessions() as db:
            code = new_code_for(db, settings, name)
            user = find_user(db, name)
            _print_code(user.name, user.role, user.identity, code, json_out)
    finally:
        engine.dispose()


@server_app.command("users")
def users(
    data: DataOpt = None, database_url: DatabaseOpt = None, json_out: JsonOpt = False
) -> None:
    """List the accounts."""
    from hsm_vault.server.accounts import list_users

    settings = _load(data, database_url=database_url)
    engine, sessions = _open_db(settings)
    try:
        with sessions() as db:
            rows = [
                {"username": u.name, "role": u.role, "identity": u.identity} for u in list_users(db)
            ]
    finally:
        engine.dispose()
    if json_out:
        print_json(rows)
        return
    for row in rows:
        console.print(f"{row['username']:<20} {row['role']:<8} {row['identity']}")


@server_app.command("add-officer")
def add_officer(
    name: Annotated[str, typer.Argument(help="The officer account whose card to approve.")],
    data: DataOpt = None,
    database_url: DatabaseOpt = None,
    pin_file: ServerPinFileOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (the fingerprint is still printed).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """The bootstrap ceremony, on the server host: approve an officer's published card with
    the application key and name it in a new signed policy.

    Compare the printed card fingerprint with the officer, out of band, before confirming.
    Only while the policy names fewer officers than its approvals; after that officers add
    officers with 'hsm-vault policy propose --add-officer NAME'.
    """
    from hsm_vault.algorithms import spki_fingerprint
    from hsm_vault.cards.model import short_form
    from hsm_vault.server.accounts import find_user
    from hsm_vault.server.appkey import open_application_key
    from hsm_vault.server.approvals import add_officer_in_ceremony, officer_of

    settings = _load(
        data, database_url=database_url, pin_file=pin_file.resolve() if pin_file else None
    )
    engine, sessions = _open_db(settings)
    try:
        with sessions() as db:
            officer = officer_of(db, find_user(db, name))
            err_console.print(f"officer:          {name} (identity {officer.identity})")
            err_console.print(f"card id:          {officer.card_id}")
            err_console.print(f"short id:         {short_form(officer.card_id)}")
            err_console.print(
                f"key:              {officer.key_type.value}, "
                f"fingerprint {spki_fingerprint(officer.spki_der)}"
            )
            if not yes:
                typer.confirm(
                    f"Did {name} confirm this card id, out of band?", default=False, abort=True
                )
            with open_application_key(settings) as app_key:
                policy = add_officer_in_ceremony(db, app_key, officer)
                db.commit()
    finally:
        engine.dispose()
    if json_out:
        print_json(
            {
                "officer": name,
                "card_id": officer.card_id,
                "policy_serial": policy.serial,
                "approvals": policy.body.approvals,
                "officers": [o.username for o in policy.body.officers],
            }
        )
        return
    console.print(
        f"{name} is an officer: policy {policy.serial} names "
        f"{', '.join(o.username for o in policy.body.officers)} "
        f"for {policy.body.approvals} approval(s) per card"
    )


@server_app.command("openapi")
def openapi() -> None:
    """Print the API's OpenAPI document (JSON); docs/openapi.json is this output."""
    import json
    import tempfile

    from hsm_vault.server.app import create_app

    # The document depends on the routes only: no data folder, database or token is opened.
    with tempfile.TemporaryDirectory() as folder:
        document = create_app(ServerSettings(data_dir=Path(folder))).openapi()
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


def register(app: typer.Typer) -> None:
    """Add the `server` command group."""
    app.add_typer(server_app, name="server")
