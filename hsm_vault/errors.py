"""The one exception tree of hsm-vault.

Every error a person can cause is a subclass of `HsmVaultError` with a message that says what
went wrong and a `hint` that says what to do next. The CLI alone turns these into `error:` /
`hint:` lines and an exit code; library code raises and never prints. Outside exceptions
(python-pkcs11, cryptography, requests, SQLAlchemy) are converted at the layer that owns that
library, with `raise ... from`.

Messages never contain a PIN, a key or plaintext.

`http_status` is the one table between errors and HTTP: the server answers an error raised
while handling a request with its class's status, and the client turns an error status back
into the `ServerError` class that claims it (`server_error_for_status`).
"""

from __future__ import annotations

from functools import cache


class HsmVaultError(Exception):
    """Base of every hsm-vault error."""

    hint: str = ""
    exit_code: int = 1
    #: The status a server answers with when this is raised while handling a request.
    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(HsmVaultError):
    """The command was given something it cannot use."""

    exit_code = 2
    http_status = 422
    hint = "Run the command with --help to see what it takes."


class ConfigError(HsmVaultError):
    hint = "Check the config file (hsm-vault config path shows where it is)."


class FileExistsRefused(HsmVaultError):
    hint = "Choose another output path, or pass --force to replace it."


# --- cryptographic checks (algorithms.py) -----------------------------------------------------


class CryptoError(HsmVaultError):
    """A public key or a signature that fails a cryptographic check, whatever it belongs to.

    The layers that know what the key or signature is (a card, a policy, a file) report it
    as their own error.
    """

    http_status = 422
    hint = "Do not use this key or signature; ask whoever sent it to check it."


class InvalidSignature(CryptoError):
    """A signature that does not verify, or whose algorithm does not fit the key."""


class KeyFormatError(CryptoError):
    """A public key that is malformed, or of a curve, size or hash hsm-vault does not use."""


# --- token layer -------------------------------------------------------------------------------


class TokenLayerError(HsmVaultError):
    """Anything that went wrong talking to a PKCS#11 module or token."""

    http_status = 503

    hint = "Run 'hsm-vault token list' to see the tokens the module offers."


class ModuleNotFound(TokenLayerError):
    hint = (
        "Pass --module PATH, set HSM_VAULT_PKCS11_MODULE, save one with "
        "'hsm-vault config set module PATH', or register the module with p11-kit."
    )


class ModuleLoadError(TokenLayerError):
    hint = "Check that the path is a PKCS#11 module and that its own configuration is valid."


class TokenNotFound(TokenLayerError):
    hint = "Run 'hsm-vault token list' to see the token labels, and check the token is inserted."


class AmbiguousToken(TokenLayerError):
    hint = "Name the token by label or serial: --token LABEL or pkcs11:serial=..."


class KeyNotFound(TokenLayerError):
    hint = "Run 'hsm-vault key list' to see the keys on the token."


class AmbiguousKey(TokenLayerError):
    hint = "Several keys match: name one by its id, e.g. pkcs11:token=T;id=%01%02."


class DuplicateLabel(TokenLayerError):
    hint = "Choose another label, or delete the old key first with 'hsm-vault key delete'."


class PinIncorrect(TokenLayerError):
    hint = "Try again with the right PIN; the token may lock after a few more wrong tries."


class PinLocked(TokenLayerError):
    hint = "The user PIN is locked: the security officer must unblock it with the SO PIN."


class PinUnavailable(TokenLayerError):
    hint = "Set HSM_VAULT_PIN, pass --pin-file FILE, or run the command from a terminal."


class KeyPolicyError(TokenLayerError):
    """A key does not have the protection attributes hsm-vault requires."""

    hint = "Generate a new key on the token with 'hsm-vault key generate'."


class UnsupportedMechanism(TokenLayerError):
    hint = "Run 'hsm-vault token info' to see which operations this token supports."


class TokenCannot(UnsupportedMechanism):
    """The token lacks what an operation needs (a mechanism, a key size, a function).

    Never a sign of a damaged file: the message names the token and its model.
    """


class ManagementKeyRefused(TokenLayerError):
    """A PIV management key that is malformed, wrong, or the factory default."""

    hint = "Check the management key; docs/yubikey.md says how it is set and kept."


class SlotOccupied(TokenLayerError):
    hint = (
        "Choose a free slot with --slot, or pass --force to overwrite it (the key in it is "
        "destroyed, and files encrypted to it can no longer be decrypted)."
    )


class TokenOperationFailed(TokenLayerError):
    hint = "The token refused the operation; check the key type and the token's log."


class AttestationError(TokenLayerError):
    """A key attestation that does not verify (chain, signature, or the key it names)."""

    hint = (
        "Do not rely on this key being made on the device; if it should be, generate a new key "
        "on the token and check again (docs/yubikey.md, Attestation)."
    )


# --- cards ------------------------------------------------------------------------------------


class CardError(HsmVaultError):
    http_status = 422
    hint = "Ask the card's owner to export it again, and compare its fingerprint out of band."


class CardFormatError(CardError):
    """The card text or bytes are malformed, not canonical, or of an unknown version."""


class CardVerificationError(CardError):
    """A card id or signature did not verify, or a required signer is missing."""


class CardNotFound(CardError):
    http_status = 404
    hint = "Run 'hsm-vault card list' to see the cards in the keyring, or 'card find' to fetch."


class AmbiguousCard(CardError):
    hint = "Several cards match: name one by its id (see 'hsm-vault card list')."


class CardRevoked(CardError):
    hint = "The card was revoked: ask its owner for their current card."


class KeyringError(CardError):
    hint = "Check the keyring folder; 'hsm-vault card list' reports entries it cannot read."


class PolicyFormatError(CardFormatError):
    """A signed server policy that is malformed, not canonical, or of an unknown version."""

    hint = "The server sent a broken policy: tell your security officer."


class PolicyVerificationError(CardVerificationError):
    """A server policy that must not be accepted (signatures, serial, quorum)."""

    hint = (
        "Do not trust this server's cards until your security officers confirm the policy "
        "('hsm-vault policy show')."
    )


# --- envelope (file format) -------------------------------------------------------------------


class EnvelopeError(HsmVaultError):
    hint = "The file is not a valid hsm-vault file, or it was damaged or tampered with."


class HeaderError(EnvelopeError):
    """The header is malformed, of an unknown version, or its MAC does not verify."""


class PayloadError(EnvelopeError):
    """A payload chunk failed authentication, or the payload was truncated or extended."""


class NoMatchingRecipient(EnvelopeError):
    hint = "The file was not encrypted to any key on this token; 'hsm-vault inspect' lists them."


class SignatureError(EnvelopeError):
    hint = "Do not trust this file: its signature is missing or does not verify."


class RecoveryError(EnvelopeError):
    """A recovery request or share that is malformed or does not verify, or too few shares."""

    hint = (
        "Nothing was written. Check that every share is for this file and this request, and "
        "ask the officer who made a refused one to approve again."
    )


class RecoveryFormatError(RecoveryError):
    """A recovery request or share text that is malformed (rules R1, R5 in docs/trust.md)."""


# --- server and client -------------------------------------------------------------------------


class ServerError(HsmVaultError):
    hint = "Check the server URL and that the server is running."


class NotLoggedIn(ServerError):
    hint = "Run 'hsm-vault login --server URL' first."


class AuthenticationFailed(ServerError):
    http_status = 401
    hint = "Log in again with 'hsm-vault login'; ask an officer for a new enrolment code."


class TooManyAttempts(AuthenticationFailed):
    """429: too many failed authentications from this address or for this user."""

    http_status = 429

    hint = "Too many failed attempts; wait a while and try again."


class PermissionDenied(ServerError):
    http_status = 403
    hint = "Ask an officer or admin to do this, or to grant you the role."


class NotFoundOnServer(ServerError):
    http_status = 404
    hint = "Check the name or id; list what is there first."


class ConflictOnServer(ServerError):
    http_status = 409
    hint = "The request conflicts with what the server holds; refresh and try again."


class PreconditionFailed(ConflictOnServer):
    """412: what the request was based on (an ETag) changed on the server meanwhile."""

    http_status = 412


class RequestRejected(ServerError):
    """422: the server could not use what it was sent (its message says why)."""

    http_status = 422
    hint = "The server rejected the request; its message says why."


class BadRequest(RequestRejected):
    """400: a request the server could not read."""

    http_status = 400


class TooLarge(ServerError):
    http_status = 413
    hint = "The upload is over the server's size limit or your quota; delete old blobs first."


class ServerUnreachable(ServerError):
    hint = "Check the server URL, the network, and that 'hsm-vault server run' is up."


class ServerTrustError(ServerError):
    hint = (
        "The server's answer did not verify against the pinned application key and server "
        "policy: do not use it; tell your security officer."
    )


# --- the transparency log ------------------------------------------------------------------------


class LogError(ServerTrustError):
    """The server's transparency log, a tree head or a proof does not verify."""

    hint = (
        "Do not trust this server's answers: alert your security officer, with this message "
        "and the output of 'hsm-vault log head'."
    )


class LogFormatError(LogError):
    """A log entry, tree head or proof that is malformed."""


class LogProofError(LogError):
    """A Merkle inclusion or consistency proof, or a recomputed root, that does not verify."""


class LogForkError(LogError):
    """The server's log is not an extension of the one this client saw: a fork, a rollback
    (restored backup), or a rewritten entry."""


class LogMoved(LogForkError):
    """The log grew again while a card answer was being checked: ask again (the client
    retries once; a second time it is refused like a fork)."""


class LogWithheld(LogError):
    """The server serves a card without the revocation or rotation its log holds."""


class LogStale(LogError):
    """The server's signed tree head is older than the maximum age this client accepts."""


@cache
def _server_errors_by_status() -> dict[int, type[ServerError]]:
    found: dict[int, type[ServerError]] = {}
    pending: list[type[ServerError]] = [ServerError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.http_status < 500:
            if cls.http_status in found:
                raise AssertionError(f"two errors claim HTTP {cls.http_status}")
            found[cls.http_status] = cls
    return found


def server_error_for_status(status: int) -> type[ServerError] | None:
    """The `ServerError` class whose `http_status` is `status` (None if no class claims it)."""
    return _server_errors_by_status().get(status)
