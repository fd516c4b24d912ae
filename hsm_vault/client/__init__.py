"""The server's HTTP API as Python calls: the only module that imports `requests`.

One `requests.Session` per client, a timeout on every call, retries only for safe methods
(GET, HEAD, OPTIONS; a connection that was never made is retried for any method), TLS
verification always on (with an optional CA bundle), and every problem document the server
answers turned into the matching `hsm_vault.errors` exception carrying the server's message.

Trust: nothing the server says about a card is taken on its word. `find_cards` and
`fetch_card` hand every card and revocation to `hsm_vault.trust` under the caller's
`TrustPolicy` (self, "app" and officer signatures against the anchors pinned at login, see
`hsm_vault.client.pinning`), and raise `ServerTrustError` if anything fails, returning nothing
from that answer.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from hsm_vault import __version__
from hsm_vault.algorithms import SignatureAlgorithm, load_spki, spki_fingerprint
from hsm_vault.cards.keyring import Keyring, KeyringEntry
from hsm_vault.cards.model import Card, CardSignature
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.cards.status import CardStatus, Origin
from hsm_vault.config import Config
from hsm_vault.errors import (
    CardError,
    HsmVaultError,
    LogMoved,
    NotFoundOnServer,
    NotLoggedIn,
    ServerError,
    ServerTrustError,
    ServerUnreachable,
    TooManyAttempts,
    UsageError,
    server_error_for_status,
)
from hsm_vault.trust import SignedPolicy, TrustPolicy, VerifiedCard, load_app_key, verify_entry
from hsm_vault.trust.entries import LogCheck

#: (connect, read) seconds; every call has a timeout.
DEFAULT_TIMEOUT = (5.0, 30.0)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOW_HTTP_ENV = "HSM_VAULT_ALLOW_HTTP"
# --- what the API returns ------------------------------------------------------------------------


@dataclass(frozen=True)
class AppKey:
    """The server's application key as `GET /v1/app` states it (not yet trusted)."""

    spki_der: bytes
    algorithm: SignatureAlgorithm
    auto_approve: bool

    @property
    def fingerprint(self) -> str:
        return spki_fingerprint(self.spki_der)


@dataclass(frozen=True)
class Enrolment:
    """The answer to an enrolment: the API token (a secret) and the account."""

    token: str
    username: str
    role: str
    identity: str
    expires_at: str

    def __repr__(self) -> str:
        return f"Enrolment(username={self.username!r}, role={self.role!r}, token=<redacted>)"


@dataclass(frozen=True)
class CardEntry:
    """A card record as the server states it: the text and status are not verified here."""

    id: str
    identity: str
    owner: str
    status: CardStatus
    card_text: str
    previous_id: str | None
    superseded_by: str | None
    published_at: str
    decided_by: str | None
    reject_reason: str | None
    revocation_text: str | None
    #: For a pending card: whether its identity already has an approved card it does not replace.
    second_card: bool = False
    #: The signed tree head of the answer, and the card's log entries with their proofs.
    log_head: str | None = None
    log: Any = None

    @classmethod
    def from_json(cls, obj: Any, log_head: str | None = None) -> CardEntry:
        if not isinstance(obj, dict):
            raise ServerError("the server sent a malformed card record")
        try:
            return cls(
                id=str(obj["id"]),
                identity=str(obj["identity"]),
                owner=str(obj["owner"]),
                status=CardStatus(str(obj["status"])),
                card_text=str(obj["card"]),
                previous_id=obj.get("previous_id"),
                superseded_by=obj.get("superseded_by"),
                published_at=str(obj.get("published_at", "")),
                decided_by=obj.get("decided_by"),
                reject_reason=obj.get("reject_reason"),
                revocation_text=obj.get("revocation"),
                second_card=bool(obj.get("second_card", False)),
                log_head=obj.get("log_head") or log_head,
                log=obj.get("log"),
            )
        except KeyError as exc:
            raise ServerError(f"the server sent a card record without {exc.args[0]}") from None
        except ValueError:
            status = str(obj["status"])[:20]
            raise ServerError(
                f"the server sent a card record of unknown status {status!r}"
            ) from None


# --- the client ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (where plain HTTP is acceptable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_server_url(url: str) -> str:
    """Check and normalise a server URL: https, or http on loopback only (or if allowed)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL", hint="Use e.g. https://vault.example")
    if (
        parts.scheme == "http"
        and not is_loopback(parts.hostname)
        and os.environ.get(ALLOW_HTTP_ENV) != "1"
    ):
        raise UsageError(
            f"refusing plain HTTP to {parts.hostname}: the API token would cross the network "
            "in clear",
            hint=f"Use https:// (set {ALLOW_HTTP_ENV}=1 only on a network you trust).",
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _problem_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, str) and detail:
            return detail
    return f"HTTP {response.status_code} {response.reason or ''}".strip()


def error_for(response: requests.Response) -> ServerError:
    """The hsm-vault exception for an error response, with the server's message."""
    status = response.status_code
    message = _problem_message(response)
    cls = server_error_for_status(status)
    if cls is TooManyAttempts:
        wait = response.headers.get("Retry-After")
        return TooManyAttempts(
            message,
            hint=f"Too many failed attempts; wait {wait or 'a while'} seconds and try again.",
        )
    if cls is not None:
        return cls(message)
    if status >= 500:
        return ServerError(f"the server failed: {message}")
    return ServerError(message)


class _Session(requests.Session):
    """A Session whose own CA bundle wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE.

    requests lets those variables replace `session.verify` on every request; with a CA bundle
    chosen for this server (--ca-bundle), that would silently verify against another one.
    """

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


class VaultClient:
    """A client of one hsm-vault server. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        server_url: str,
        *,
        api_token: str | None = None,
        ca_bundle: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retries: int = 3,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = normalise_server_url(server_url)
        self.timeout = timeout
        self.session = session or _Session()
        self.session.headers["User-Agent"] = f"hsm-vault/{__version__}"
        self.session.headers["Accept"] = "application/json, application/problem+json"
        self.session.verify = ca_bundle or True
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=0.2,
            status_forcelist=(502, 503, 504),
            allowed_methods=SAFE_METHODS,
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.api_token = api_token

    def __repr__(self) -> str:
        return f"VaultClient({self.base_url!r}, api_token={'<set>' if self._api_token else None})"

    @property
    def api_token(self) -> str | None:
        return self._api_token

    @api_token.setter
    def api_token(self, value: str | None) -> None:
        # On the session, so modules streaming through `session` directly are authenticated.
        self._api_token = value
        if value:
            self.session.headers["Authorization"] = f"Bearer {value}"
        else:
            self.session.headers.pop("Authorization", None)

    def url(self, path: str) -> str:
        """The absolute URL of an API path such as /v1/cards."""
        return self.base_url + path

    @classmethod
    def from_config(cls, config: Config, *, need_login: bool = True) -> VaultClient:
        """A client for the server and API token in the client config."""
        if not config.server_url:
            raise NotLoggedIn("no server configured")
        if need_login and not config.api_token:
            raise NotLoggedIn(f"not logged in to {config.server_url}")
        return cls(config.server_url, api_token=config.api_token, ca_bundle=config.ca_bundle)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authenticated: bool = True,
        timeout: tuple[float, float] | None = None,
    ) -> requests.Response:
        """Send one request to `path` (under the server URL) and return a 2xx response.

        Raises the matching `ServerError` subclass for an error answer and `ServerUnreachable`
        when the server cannot be reached. Other API modules (blobs) build on this.
        """
        all_headers: dict[str, str | None] = dict(headers or {})
        if authenticated and not self._api_token:
            raise NotLoggedIn("this needs a login")
        if not authenticated:
            all_headers["Authorization"] = None  # requests drops a None session header
        url = self.url(path)
        try:
            response = self.session.request(
                method,
                url,
                json=json,
                params=params,
                data=data,
                headers=all_headers,
                stream=stream,
                timeout=timeout or self.timeout,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise ServerUnreachable(
                f"TLS failed with {self.base_url}: {type(exc).__name__}",
                hint="Check the server certificate, or pass its CA with --ca-bundle.",
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerUnreachable(
                f"cannot reach {self.base_url} ({type(exc).__name__})"
            ) from None
        except requests.RequestException as exc:
            raise ServerError(f"request to {self.base_url} failed: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                raise error_for(response)
            finally:
                response.close()
        if 300 <= response.status_code < 400:
            response.close()
            raise ServerError(f"the server redirected {method} {path}; check the server URL")
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"the server sent no JSON for {method} {path}") from None

    # -- accounts
    def app_key(self) -> AppKey:
        """The application key the server states (compare its fingerprint before pinning)."""
        body = self._json("GET", "/v1/app", authenticated=False)
        try:
            spki = base64.b64decode(body["app_key"]["spki"], validate=True)
            algorithm = SignatureAlgorithm(body["app_key"]["algorithm"])
            load_spki(spki)
        except (KeyError, TypeError, ValueError, binascii.Error, HsmVaultError):
            raise ServerTrustError("the server sent a malformed application key") from None
        stated = body["app_key"].get("fingerprint")
        if stated != spki_fingerprint(spki):
            raise ServerTrustError("the server's application key does not match its fingerprint")
        auto = bool(body.get("auto_approve"))
        return AppKey(spki_der=spki, algorithm=algorithm, auto_approve=auto)

    def enrol(self, username: str, code: str) -> Enrolment:
        """Exchange a one-time enrolment code for an API token (kept by this client too)."""
        body = self._json(
            "POST", "/v1/enrol", json={"username": username, "code": code}, authenticated=False
        )
        enrolment = Enrolment(
            token=body["token"],
            username=body["username"],
            role=body["role"],
            identity=body["identity"],
            expires_at=body["expires_at"],
        )
        self.api_token = enrolment.token
        return enrolment

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/me")
        return result

    def logout(self) -> None:
        """Revoke this client's API token on the server."""
        self.request("POST", "/v1/logout").close()
        self.api_token = None

    def logout_all(self) -> int:
        """Revoke every API token of this account, this one included; how many."""
        body = self._json("POST", "/v1/logout/all")
        self.api_token = None
        return int(body["revoked"])

    def list_users(self) -> list[dict[str, Any]]:
        """Every account with its tokens and enrolment codes (officers and admins)."""
        body = self._json("GET", "/v1/users")
        if not isinstance(body, list):
            raise ServerError("the server sent a malformed account list")
        return body

    def revoke_user_tokens(self, username: str) -> int:
        """Revoke every API token of `username` (officers and admins); how many."""
        body = self._json("POST", f"/v1/users/{_path_part(username)}/revoke-tokens")
        return int(body["revoked"])

    def set_user_disabled(self, username: str, disabled: bool) -> dict[str, Any]:
        """Disable or enable an account (officers and admins); the account as it is now."""
        verb = "disable" if disabled else "enable"
        result: dict[str, Any] = self._json("POST", f"/v1/users/{_path_part(username)}/{verb}")
        return result

    def create_user(self, username: str, role: str = "user", identity: str | None = None) -> str:
        """Create an account (admins); returns its one-time enrolment code."""
        body = self._json(
            "POST", "/v1/users", json={"username": username, "role": role, "identity": identity}
        )
        return str(body["enrolment_code"])

    # -- cards, as the server states them
    def publish_card(self, card: Card) -> CardEntry:
        return CardEntry.from_json(self._json("POST", "/v1/cards", json={"card": card.to_text()}))

    def pending_cards(self) -> list[CardEntry]:
        return self._card_list(self._json("GET", "/v1/cards/pending"))

    def my_cards(self) -> list[CardEntry]:
        return self._card_list(self._json("GET", "/v1/cards/mine"))

    def approve_card(self, card_id: str, signature: CardSignature | None = None) -> CardEntry:
        """Approve a pending card, with the officer's signature made on their token (needed
        when the server policy requires officer approvals)."""
        body = {"signature": signature.to_json()} if signature is not None else None
        return CardEntry.from_json(
            self._json("POST", f"/v1/cards/{_card_path(card_id)}/approve", json=body)
        )

    def reject_card(self, card_id: str, reason: str) -> CardEntry:
        return CardEntry.from_json(
            self._json("POST", f"/v1/cards/{_card_path(card_id)}/reject", json={"reason": reason})
        )

    def revoke_card(
        self,
        card_id: str,
        *,
        statement: RevocationStatement | None = None,
        reason: str = "unspecified",
    ) -> CardEntry:
        """Revoke with a statement signed on the owner's token, or (officers) with a reason."""
        body: dict[str, Any] = {"reason": reason}
        if statement is not None:
            body = {"statement": statement.to_text(), "reason": statement.reason.value}
        return CardEntry.from_json(
            self._json("POST", f"/v1/cards/{_card_path(card_id)}/revoke", json=body)
        )

    def search_cards(self, identity: str) -> list[CardEntry]:
        """The server's answer to a search, unverified: use `find_cards` to trust it."""
        return self._card_list(self._json("GET", "/v1/cards", params={"identity": identity}))

    def get_card(self, card_id: str) -> CardEntry:
        """The server's record of one card, unverified: use `fetch_card` to trust it."""
        return CardEntry.from_json(self._json("GET", f"/v1/cards/{_card_path(card_id)}"))

    @staticmethod
    def _card_list(body: Any) -> list[CardEntry]:
        if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
            raise ServerError("the server sent a malformed card list")
        head = body.get("log_head")
        return [
            CardEntry.from_json(item, head if isinstance(head, str) else None)
            for item in body["cards"]
        ]

    # -- the transparency log, as the server states it (`hsm_vault.client.logsync` checks it)
    def log_head(self, since: int | None = None) -> dict[str, Any]:
        """The signed tree head, its compact tree, and a consistency proof from `since`."""
        params = None if since is None else {"since": since}
        body = self._json("GET", "/v1/log/head", params=params)
        if not isinstance(body, dict) or not isinstance(body.get("head"), str):
            raise ServerError("the server sent a malformed log head")
        return body

    def log_entries(self, start: int, end: int | None = None) -> dict[str, Any]:
        """Entries [start, end) (the server may send fewer: ask again from where it ended)."""
        params: dict[str, int] = {"start": start}
        if end is not None:
            params["end"] = end
        body = self._json("GET", "/v1/log/entries", params=params)
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
            raise ServerError("the server sent a malformed log range")
        return body

    def log_signed_head(self, size: int) -> str:
        """The newest head the server signed for at most `size` entries."""
        body = self._json("GET", f"/v1/log/heads/{int(size)}")
        if not isinstance(body, dict) or not isinstance(body.get("head"), str):
            raise ServerError("the server sent a malformed log head")
        return str(body["head"])

    # -- the signed server policy
    def policy(self, serial: int | None = None) -> SignedPolicy:
        """The server's policy in force (or the one with `serial`), parsed but not verified:
        `hsm_vault.client.pinning.update_policy` decides whether to trust it."""
        path = "/v1/policy" if serial is None else f"/v1/policy/{int(serial)}"
        return _policy_of(self._json("GET", path, authenticated=False))

    def policy_proposal(self) -> SignedPolicy:
        """The open proposal for the next policy (officers); NotFoundOnServer if none."""
        return _policy_of(self._json("GET", "/v1/policy/proposal"))

    def propose_policy(
        self,
        *,
        approvals: int | None = None,
        add_officers: tuple[str, ...] = (),
        remove_officers: tuple[str, ...] = (),
        require_attestation: bool | None = None,
        recovery: dict[str, Any] | None = None,
    ) -> SignedPolicy:
        """Propose the next policy (officers); it replaces any open proposal. `recovery`: the
        recovery rule as docs/trust.md writes it."""
        body = {
            "approvals": approvals,
            "add_officers": list(add_officers),
            "remove_officers": list(remove_officers),
            "require_attestation": require_attestation,
            "recovery": recovery,
        }
        return _policy_of(self._json("POST", "/v1/policy/proposal", json=body))

    def sign_policy_proposal(self, policy_id: str, signature: CardSignature) -> SignedPolicy:
        """Add an officer's signature to the open proposal; once it has the quorum the server
        adds its own and the proposal is the policy in force (its serial is then current)."""
        body = {"id": policy_id, "signature": signature.to_json()}
        return _policy_of(self._json("POST", "/v1/policy/proposal/signatures", json=body))

    # -- cards, verified
    # -- recovery
    def record_recovery_approval(self, share_text: str) -> dict[str, Any]:
        """Record a recovery approval (the signed share) on the server; its record."""
        body: dict[str, Any] = self._json(
            "POST", "/v1/recovery/approvals", json={"share": share_text}
        )
        return body

    def recovery_approvals(self, request_id: str) -> list[dict[str, Any]]:
        """The approvals the server recorded for a recovery request."""
        body: list[dict[str, Any]] = self._json(
            "GET", f"/v1/recovery/requests/{request_id}/approvals"
        )
        return body

    def find_cards(
        self, identity: str, policy: TrustPolicy, log: LogCheck | None = None
    ) -> list[VerifiedCard]:
        """Approved cards for `identity`, every one verified (with `log`, also in the
        transparency log); ServerTrustError if any fails."""
        for attempt in (1, 2):
            entries = self.search_cards(identity)
            try:
                return [verify_entry(e, policy, expect_identity=identity, log=log) for e in entries]
            except LogMoved:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def fetch_card(
        self, card_id: str, policy: TrustPolicy, log: LogCheck | None = None
    ) -> VerifiedCard:
        """One card by id with its status and verified revocation, if any."""
        for attempt in (1, 2):
            entry = self.get_card(card_id)
            try:
                return verify_entry(entry, policy, expect_id=card_id, log=log)
            except LogMoved:  # the log grew between the answer and the check: once more
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def client_from_config(config: Config | None = None, *, need_login: bool = True) -> VaultClient:
    """A client for the server and API token in the client config file."""
    return VaultClient.from_config(config or Config.load(), need_login=need_login)


def _card_path(card_id: str) -> str:
    return quote(card_id.lower(), safe="")


def _policy_of(body: Any) -> SignedPolicy:
    if not isinstance(body, dict) or not isinstance(body.get("policy"), str):
        raise ServerError("the server sent a malformed policy answer")
    try:
        return SignedPolicy.from_text(body["policy"])
    except CardError as exc:
        raise ServerTrustError(f"the server's policy is malformed: {exc.message}") from None


def _path_part(text: str) -> str:
    return quote(text, safe="")


def pinned_app_key(config: Config) -> bytes:
    """The application key pinned at login; ServerTrustError if it is missing or altered."""
    return load_app_key(config.app_key_spki, config.app_fingerprint)


# --- the local keyring, fed only with verified cards ------------------------------------------


def fetch_cards_into_keyring(
    client: VaultClient,
    identity: str,
    policy: TrustPolicy,
    keyring: Keyring,
    log: LogCheck | None = None,
) -> list[KeyringEntry]:
    """Find `identity`'s approved cards, verify every one, and keep them in `keyring`.

    Cards of that identity already in the keyring that the server no longer lists are looked
    up by id, and a verified revocation is kept, so a revoked card stops being used here too.
    Nothing is stored if any card in the answer fails verification (ServerTrustError).
    """
    found = client.find_cards(identity, policy, log)
    entries = [keyring.add(v.card, origin=Origin.IMPORTED) for v in found]
    listed = {v.card.id for v in found}
    for entry in keyring.find(identity):
        if entry.card.id in listed or entry.revocation is not None:
            continue
        refresh_card_status(client, entry.card.id, policy, keyring, log)
    return entries


def refresh_card_status(
    client: VaultClient,
    card_id: str,
    policy: TrustPolicy,
    keyring: Keyring,
    log: LogCheck | None = None,
) -> VerifiedCard | None:
    """Ask the server about one card and keep a verified revocation in the keyring.

    Returns None when the server does not know the card (e.g. it was never published there).
    """
    try:
        verified = client.fetch_card(card_id, policy, log)
    except NotFoundOnServer:
        return None
    if verified.revocation is not None:
        keyring.add_revocation(verified.revocation, policy)
    return verified


def fetch_identity(identity: str, keyring: Keyring | None = None) -> list[KeyringEntry]:
    """For `encrypt --to IDENTITY` when the keyring lacks it: fetch, verify and keep the
    identity's approved cards using the logged-in server of the client config.

    Raises NotLoggedIn when no server login is configured, ServerTrustError when the answer
    does not verify (nothing is kept then).
    """
    from hsm_vault.client.pinning import update_policy

    config = Config.load()
    with VaultClient.from_config(config) as client:
        anchors = update_policy(client, config)
        return fetch_cards_into_keyring(
            client, identity, anchors.card_policy(), keyring or Keyring(), anchors.log
        )
