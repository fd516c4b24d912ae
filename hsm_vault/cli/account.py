"""`hsm-vault login`, `logout`, `whoami`: the client's account on a server.

Login pins the server's application key: every card fetched later is verified against it, so
a server (or anything between) that swaps keys is caught by the client.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hsm_vault.cli.common import JsonOpt, YesOpt, console, err_console, print_json
from hsm_vault.config import Config
from hsm_vault.errors import (
    AuthenticationFailed,
    NotLoggedIn,
    ServerTrustError,
    TooManyAttempts,
    UsageError,
)

CODE_ENV = "HSM_VAULT_ENROLMENT_CODE"


def _read_code(code_file: Path | None) -> str:
    if code_file is not None:
        try:
            text = code_file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {code_file}: {exc.strerror}") from None
        code = text.strip().splitlines()[0] if text.strip() else ""
        if not code:
            raise UsageError(f"{code_file} is empty")
        return code
    code = os.environ.get(CODE_ENV, "").strip()
    if code:
        return code
    if sys.stdin.isatty():
        return str(typer.prompt("Enrolment code", hide_input=True)).strip()
    raise UsageError(
        "no enrolment code",
        hint=f"Type it at the prompt on a terminal, pass --code-file FILE, or set {CODE_ENV}.",
    )


def login(
    server: Annotated[str, typer.Option("--server", "-s", help="The server URL.")],
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Your user name (asked if not given).")
    ] = None,
    code_file: Annotated[
        Path | None,
        typer.Option(
            "--code-file",
            help=f"Read the one-time enrolment code from this file (else ${CODE_ENV} or a "
            "hidden prompt).",
            show_default=False,
        ),
    ] = None,
    app_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--app-fingerprint",
            help="The application key fingerprint your officer gave you; login fails if the "
            "server's differs.",
            show_default=False,
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", help="CA certificates (PEM) to verify the server with."),
    ] = None,
    trust_on_first_use: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use",
            help="Without --app-fingerprint and without a terminal (or with --yes): pin "
            "whatever key the server offers. Check the printed fingerprint out of band later.",
        ),
    ] = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Exchange a one-time enrolment code for an API token and pin the application key.

    The token is stored in the config file (mode 0600). Pass the application key fingerprint
    your officer gave you (--app-fingerprint, all 64 hex digits) so the check is done for you;
    otherwise it is shown and you are asked whether it matches. Without a terminal (or with
    --yes) and without --app-fingerprint, login refuses unless --trust-on-first-use.
    """
    from hsm_vault.client import VaultClient, normalise_server_url
    from hsm_vault.trust.anchors import AppKeyCheck, check_app_key

    config = Config.load()
    url = normalise_server_url(server)
    ca = (
        str(ca_bundle.resolve())
        if ca_bundle
        else (config.ca_bundle if config.server_url == url else None)
    )
    if user is None:
        if not sys.stdin.isatty():
            raise UsageError("no user name", hint="Pass --user NAME.")
        user = str(typer.prompt("User name")).strip()
    with VaultClient(url, ca_bundle=ca) as client:
        app = client.app_key()
        fingerprint = app.fingerprint
        pinned = config.app_fingerprint if config.server_url == url else None
        check = check_app_key(fingerprint, given=app_fingerprint, pinned=pinned)
        if check is AppKeyCheck.UNCHECKED:
            err_console.print(f"application key fingerprint: {fingerprint}", markup=False)
            err_console.print(
                "Check it against the fingerprint your security officer gave you out of band "
                "(in person, on paper, on the intranet): it is what stops a false server.",
                markup=False,
            )
            interactive = sys.stdin.isatty() and not yes
            if interactive:
                if not typer.confirm(
                    "Does it match the fingerprint your officer gave you?", default=False
                ):
                    raise typer.Abort()
            elif not trust_on_first_use:
                raise ServerTrustError(
                    "not pinning an application key nobody checked",
                    hint="Pass --app-fingerprint FP (the full 64 hex digits from your officer), "
                    "or --trust-on-first-use to pin the key shown above.",
                )
        code = _read_code(code_file)
        try:
            enrolment = client.enrol(user, code)
        except TooManyAttempts:
            raise
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(
                exc.message,
                hint="Check the user name; an enrolment code works once and expires: ask your "
                "officer or admin for a new one ('hsm-vault server enrol-code NAME').",
            ) from None
    config.server_url = url
    config.api_token = enrolment.token
    config.username = enrolment.username
    config.app_fingerprint = fingerprint
    config.app_key_spki = base64.b64encode(app.spki_der).decode()
    config.ca_bundle = ca
    config.save()
    policy = _pin_policy(config)
    if json_out:
        print_json(
            {
                "server": url,
                "username": enrolment.username,
                "role": enrolment.role,
                "identity": enrolment.identity,
                "token_expires_at": enrolment.expires_at,
                "app_fingerprint": fingerprint,
                "policy_serial": policy.serial,
            }
        )
        return
    console.print(
        f"logged in to {url} as {enrolment.username} ({enrolment.role}); "
        f"token expires {enrolment.expires_at}"
    )
    console.print(f"pinned application key {fingerprint}")
    console.print(
        f"pinned server policy {policy.serial}: {policy.body.approvals} officer approval(s) "
        "per card"
    )


def _pin_policy(config: Config) -> Any:
    """Fetch the server's signed policy, verify it from policy 1 (or the one pinned) against
    the application key just pinned, and pin it."""
    from hsm_vault.client import VaultClient
    from hsm_vault.client.pinning import update_policy

    with VaultClient.from_config(config) as client:
        return update_policy(client, config).policy


def logout(
    everywhere: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Revoke every API token of your account (every machine you logged in on), "
            "e.g. after a laptop was lost.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Revoke the API token on the server and remove it from the config file."""
    from hsm_vault.client import VaultClient

    config = Config.load()
    if not config.api_token:
        raise NotLoggedIn("not logged in")
    revoked = 1
    with VaultClient.from_config(config) as client:
        try:
            if everywhere:
                revoked = client.logout_all()
            else:
                client.logout()
        except AuthenticationFailed:
            if everywhere:
                raise
            revoked = 0  # expired or revoked already: forgetting it is all that is left
    config.api_token = None
    config.save()
    if json_out:
        print_json({"server": config.server_url, "revoked": revoked})
        return
    if everywhere:
        console.print(f"logged out of {config.server_url} everywhere ({revoked} token(s) revoked)")
        return
    console.print(f"logged out of {config.server_url}")


def whoami(json_out: JsonOpt = False) -> None:
    """Show your account, the pinned application key and the server policy.

    The policy is first brought up to date along its verified chain from the pinned one.
    """
    from hsm_vault.cli.policy import policy_summary
    from hsm_vault.client import VaultClient
    from hsm_vault.client.pinning import update_policy

    config = Config.load()
    with VaultClient.from_config(config) as client:
        me = client.whoami()
        policy = update_policy(client, config).policy
    info = {
        "server": config.server_url,
        "username": me.get("username"),
        "role": me.get("role"),
        "identity": me.get("identity"),
        "token_expires_at": me.get("token_expires_at"),
        "app_fingerprint": config.app_fingerprint,
        "policy": policy_summary(policy) if policy is not None else None,
    }
    if json_out:
        print_json(info)
        return
    console.print(f"{info['username']} ({info['role']}, identity {info['identity']})")
    console.print(f"server:          {info['server']}")
    console.print(f"token expires:   {info['token_expires_at']}")
    console.print(f"application key: {info['app_fingerprint']}")
    if policy is not None:
        officers = ", ".join(o.username for o in policy.body.officers) or "none yet"
        console.print(
            f"server policy:   serial {policy.serial}, {policy.body.approvals} officer "
            f"approval(s) per card; officers: {officers}"
        )


account_app = typer.Typer(
    name="account",
    help="Manage other people's accounts on the server (officers and admins).",
    no_args_is_help=True,
)
UserArg = Annotated[str, typer.Argument(help="The account's user name.")]


def _officer_client() -> Any:
    from hsm_vault.client import client_from_config

    return client_from_config()


@account_app.command("list")
def account_list(json_out: JsonOpt = False) -> None:
    """Every account with its API tokens (created, last used, expiry) and enrolment codes."""
    from hsm_vault.cli.shapes import print_accounts

    with _officer_client() as client:
        users = client.list_users()
    print_accounts(users, json_out=json_out)


@account_app.command("revoke-tokens")
def account_revoke_tokens(user: UserArg, json_out: JsonOpt = False) -> None:
    """Revoke every API token of USER (a stolen laptop); they log in again with a new code."""
    with _officer_client() as client:
        count = client.revoke_user_tokens(user)
    if json_out:
        print_json({"username": user, "revoked": count})
        return
    console.print(f"revoked {count} API token(s) of {user}", markup=False)


def _set_disabled(user: str, disabled: bool, json_out: bool) -> None:
    from hsm_vault.cli.shapes import print_accounts

    with _officer_client() as client:
        account = client.set_user_disabled(user, disabled)
    if json_out:
        print_json(account)
        return
    print_accounts([account], json_out=False)


@account_app.command("disable")
def account_disable(user: UserArg, json_out: JsonOpt = False) -> None:
    """Disable USER: every request with their tokens, and their enrolment codes, are refused."""
    _set_disabled(user, True, json_out)


@account_app.command("enable")
def account_enable(user: UserArg, json_out: JsonOpt = False) -> None:
    """Enable USER again (tokens that are neither revoked nor expired work again)."""
    _set_disabled(user, False, json_out)


def register(app: typer.Typer) -> None:
    """Add `login`, `logout`, `whoami` and the `account` group."""
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.add_typer(account_app, name="account")
