"""`hsm-vault login`, `logout`, `whoami`: the client's account on a server.

Login pins the server's application key: every card fetched later is verified against it, so
a server (or anything between) that swaps keys is caught by the client.
"""

from __future__ import annotations

import base64
import hmac
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
    UsageError,
)

CODE_ENV = "HSM_VAULT_ENROLMENT_CODE"


def normalise_fingerprint(text: str) -> str:
    """Lower-case hex without separators (colons, spaces) as people copy fingerprints."""
    return "".join(ch for ch in text.lower() if ch not in ": \t\n-")


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
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Exchange a one-time enrolment code for an API token and pin the application key.

    The token is stored in the config file (mode 0600). The server's application key
    fingerprint is shown; compare it with the one your officer gave you, or pass it with
    --app-fingerprint so the check is done for you.
    """
    from hsm_vault.client import VaultClient, normalise_server_url

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
        if app_fingerprint is not None:
            if not hmac.compare_digest(normalise_fingerprint(app_fingerprint), fingerprint):
                raise ServerTrustError(
                    f"the server's application key fingerprint is {fingerprint}, "
                    "not the one you were given"
                )
        elif (
            config.server_url == url
            and config.app_fingerprint
            and config.app_fingerprint != fingerprint
        ):
            raise ServerTrustError(
                f"the server's application key changed: pinned {config.app_fingerprint}, "
                f"now {fingerprint}",
                hint="Ask your security officer; if the change is expected, log in with "
                "--app-fingerprint NEW.",
            )
        else:
            err_console.print(f"application key fingerprint: {fingerprint}")
            if (
                sys.stdin.isatty()
                and not yes
                and not typer.confirm(
                    "Does it match the fingerprint your officer gave you?", default=False
                )
            ):
                raise typer.Abort()
        code = _read_code(code_file)
        enrolment = client.enrol(user, code)
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


def logout(json_out: JsonOpt = False) -> None:
    """Revoke the API token on the server and remove it from the config file."""
    from hsm_vault.client import VaultClient

    config = Config.load()
    if not config.api_token:
        raise NotLoggedIn("not logged in")
    revoked = True
    with VaultClient.from_config(config) as client:
        try:
            client.logout()
        except AuthenticationFailed:
            revoked = False  # expired or revoked already: forgetting it is all that is left
    config.api_token = None
    config.save()
    if json_out:
        print_json({"server": config.server_url, "revoked": revoked})
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


def register(app: typer.Typer) -> None:
    """Add `login`, `logout` and `whoami`."""
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
