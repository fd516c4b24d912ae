"""Sessions on a token: one login serves every operation in a `with open_session(...)` block.

This module and its siblings are the only users of python-pkcs11. PKCS#11 errors are turned
into hsm-vault errors here, and nothing returned to callers is a pkcs11 object.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ecdsa_signature

from hsm_vault.algorithms import KeyType, hash_algorithm, key_type_of, load_spki, spki_fingerprint
from hsm_vault.errors import (
    AmbiguousKey,
    DuplicateLabel,
    HsmVaultError,
    KeyNotFound,
    KeyPolicyError,
    ManagementKeyRefused,
    PinIncorrect,
    PinLocked,
    TokenCannot,
    TokenLayerError,
    TokenOperationFailed,
)
from hsm_vault.token import piv
from hsm_vault.token.capabilities import (
    GENERAL_TEMPLATES,
    Capabilities,
    CapabilityCache,
    PointEncoding,
    PSSMode,
)
from hsm_vault.token.failures import UNSUPPORTED, cannot, translated
from hsm_vault.token.library import (
    SelectedToken,
    TokenInfo,
    list_tokens,
    listed_mechanisms,
    refresh,
    select_token,
)
from hsm_vault.token.pin import Pin, PinSource
from hsm_vault.token.probe import (
    OAEP_MECHANISMS,
    OAEP_PREFERENCE,
    ecdh_secret,
    generate_pair,
    probe,
    pss_sign,
    public_spki,
)
from hsm_vault.token.uri import PKCS11URI, format_uri, parse_uri

__all__ = ["KeyInfo", "TokenInfo", "TokenSession", "list_tokens", "open_session"]


@dataclass(frozen=True)
class KeyInfo:
    """A key pair on a token, as hsm-vault sees it. Holds no handle and no secret."""

    label: str
    key_id: bytes
    key_type: KeyType
    spki_der: bytes
    token: TokenInfo
    local: bool
    never_extractable: bool
    always_sensitive: bool
    sensitive: bool
    extractable: bool
    capabilities: tuple[str, ...] = field(default=())
    local_not_reported: bool = False
    """The token's model reports CKA_LOCAL false even for keys it made, and an officer
    allowed that model: the key counts as made on the token, and its card says so."""
    slot: str | None = None
    """The PIV slot ('9d') on a PIV token, else None."""

    @property
    def uri(self) -> str:
        # A PIV key is named by its slot's id: its label is the module's, not ours.
        label = None if self.slot else self.label
        return format_uri(PKCS11URI(token=self.token.label, object=label, id=self.key_id))

    @property
    def fingerprint(self) -> str:
        return spki_fingerprint(self.spki_der)

    @property
    def protected(self) -> bool:
        """True if the token says the private key was made on it and can never leave it."""
        return (
            (self.local or self.local_not_reported)
            and self.never_extractable
            and self.always_sensitive
            and self.sensitive
            and not self.extractable
        )

    def public_pem(self) -> bytes:
        return serialization.load_der_public_key(self.spki_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _bool_attr(obj: Any, attr: Attribute) -> bool:
    try:
        return bool(obj[attr])
    except p11e.PKCS11Error:
        return False


class TokenSession:
    """An open, logged-in session on one token. Use through `open_session`."""

    def __init__(
        self,
        session: Any,
        selected: SelectedToken,
        cache: CapabilityCache | None = None,
        allow_unreported_local: tuple[str, ...] = (),
        *,
        security_officer: bool = False,
        context_pin: Pin | None = None,
        default_management_key: bool = False,
    ) -> None:
        self._session = session
        self._selected = selected
        self.security_officer = security_officer
        """Logged in with the PIV management key (to make and destroy keys), not the PIN."""
        self.default_management_key = default_management_key
        """The management key used is the factory default (allowed by the caller)."""
        # For keys that want the PIN again before each use (CKA_ALWAYS_AUTHENTICATE: PIV 9c).
        self._context_pin = context_pin
        self._pid = os.getpid()
        self.info = selected.info
        self._cache = cache or CapabilityCache()
        self._capabilities: Capabilities | None = None
        # An officer may allow a token model that misreports CKA_LOCAL (by model or profile).
        self._allow_unreported_local = bool(
            {self.info.model, self.info.profile} & set(allow_unreported_local)
        )
        self._oaep: dict[bytes, str] = {}
        # Private key objects by CKA_ID: a batch unwraps with the same key many times.
        self._handles: dict[bytes, Any] = {}

    def __repr__(self) -> str:
        return f"TokenSession(token={self.info.label!r})"

    def _live(self) -> Any:
        if os.getpid() != self._pid:
            raise TokenLayerError(
                "a token session cannot be used in a forked child process",
                hint="Open a new session in the child process.",
            )
        return self._session

    # --- what the token can do ---------------------------------------------------------------

    def known_capabilities(self) -> Capabilities | None:
        """The capabilities measured before (this session or the cache), without probing."""
        if self._capabilities is None:
            cached = self._cache.get(self.info.model_key)
            if cached is None and not self._selected.profile.session_keys:
                cached = Capabilities(profile=self.info.profile).with_profile(
                    self._selected.profile
                )
            self._capabilities = cached
        return self._capabilities

    def capabilities(self, *, fresh: bool = False) -> Capabilities:
        """What this token does: from the cache, or probed now with session keys and cached."""
        known = None if fresh else self.known_capabilities()
        if known is not None:
            return known
        measured = probe(self._live(), self._selected.token.slot, self._selected.profile)
        self._cache.put(self.info.model_key, measured)
        self._capabilities = measured
        return measured

    @property
    def piv(self) -> bool:
        """A PIV token: keys live in slots named by a one-byte id (see `token/piv.py`)."""
        known = self.known_capabilities()
        return known.piv if known is not None else self._selected.profile.piv

    def mechanisms(self) -> dict[str, bool]:
        """Which of the mechanisms hsm-vault uses the slot lists (C_GetMechanismList)."""
        return listed_mechanisms(self._selected)

    def _cannot_decrypt(self, key_type: KeyType, caps: Capabilities) -> TokenCannot:
        if key_type.is_ec:
            what, reason = "do ECDH, so EC keys on it cannot decrypt", caps.why_not("ecdh")
        else:
            what, reason = "do RSA-OAEP, so RSA keys on it cannot decrypt", caps.why_not("oaep")
        best = caps.best_key_type()
        hint = (
            f"Make a key of a type it can decrypt with: hsm-vault key generate LABEL --type {best}"
            if best
            else "Use another token for keys that decrypt."
        )
        return cannot(self.info, what, reason, hint)

    def _cannot_generate(self, key_type: KeyType, caps: Capabilities) -> TokenCannot:
        best = caps.best_key_type()
        return cannot(
            self.info,
            f"generate {key_type} keys",
            caps.why_not(str(key_type) if caps.generates else "generate"),
            f"Choose a type it can make, e.g. --type {best}" if best else None,
        )

    def check_can_decrypt(self, key: KeyInfo) -> None:
        """Raise `TokenCannot` if the token cannot unwrap file keys with `key`, by trying it."""
        if key.key_type.is_ec:
            peer = _ephemeral_point(key.key_type)
            self.ecdh(key, peer)
        else:
            self.oaep_hash(key)

    # --- finding keys ---------------------------------------------------------------------

    def _private_objects(self, attrs: dict[Any, Any] | None = None) -> list[Any]:
        template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **(attrs or {})}
        return list(self._live().get_objects(template))

    def _public_for(self, private: Any) -> Any:
        key_id = private[Attribute.ID]
        pubs = list(
            self._live().get_objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}
            )
        )
        if len(pubs) != 1:
            raise KeyNotFound(
                f"key {private.label!r} has {len(pubs)} public key objects with its id",
                hint="hsm-vault needs the public half stored beside the private key.",
            )
        return pubs[0]

    def _describe(self, private: Any) -> KeyInfo:
        public = self._public_for(private)
        try:
            spki = public_spki(public)
            key_type = key_type_of(load_spki(spki))
        except (ValueError, HsmVaultError) as exc:  # a curve or size hsm-vault does not use
            raise TokenOperationFailed(f"key {private.label!r} is not usable: {exc}") from None
        caps = tuple(
            name
            for name, attr in (
                ("sign", Attribute.SIGN),
                ("decrypt", Attribute.DECRYPT),
                ("derive", Attribute.DERIVE),
                ("unwrap", Attribute.UNWRAP),
            )
            if _bool_attr(private, attr)
        )
        local = _bool_attr(private, Attribute.LOCAL)
        unreported = (
            not local and self._allow_unreported_local and not self.capabilities().reports_local
        )
        key_id = bytes(private[Attribute.ID])
        slot = piv.slot_of(key_id) if self.piv else None
        return KeyInfo(
            label=private.label or "",
            key_id=bytes(private[Attribute.ID]),
            key_type=key_type,
            spki_der=spki,
            token=self.info,
            local=local,
            never_extractable=_bool_attr(private, Attribute.NEVER_EXTRACTABLE),
            always_sensitive=_bool_attr(private, Attribute.ALWAYS_SENSITIVE),
            sensitive=_bool_attr(private, Attribute.SENSITIVE),
            extractable=_bool_attr(private, Attribute.EXTRACTABLE),
            capabilities=caps,
            local_not_reported=unreported,
            slot=slot.name if slot else None,
        )

    def keys(self) -> list[KeyInfo]:
        """Every key pair on the token (private key with its public key), sorted by label."""
        found = []
        for private in self._private_objects():
            try:
                info = self._describe(private)
            except (KeyNotFound, TokenOperationFailed):
                continue  # not a pair hsm-vault can use: leave it out of the list
            if info.slot != piv.ATTESTATION_SLOT.name:  # the device's own attestation key
                found.append(info)
        return sorted(found, key=lambda k: (k.label, k.key_id))

    def find_key(self, ref: str) -> KeyInfo:
        """The one key pair named by a label or a pkcs11: URI (object= and/or id=)."""
        attrs: dict[Any, Any] = {}
        if ref.lower().startswith("pkcs11:"):
            uri = parse_uri(ref)
            if uri.type not in (None, "private", "public"):
                raise KeyNotFound(f"{ref} names a {uri.type} object, not a key pair")
            if uri.object is not None:
                attrs[Attribute.LABEL] = uri.object
            if uri.id is not None:
                attrs[Attribute.ID] = uri.id
            if not attrs:
                raise KeyNotFound(f"{ref} names no key (give object= or id=)")
        else:
            attrs[Attribute.LABEL] = ref
        matches = self._private_objects(attrs)
        if not matches:
            raise KeyNotFound(f"no key {ref!r} on token {self.info.label!r}")
        if len(matches) > 1:
            raise AmbiguousKey(f"{len(matches)} keys on token {self.info.label!r} match {ref!r}")
        return self._describe(matches[0])

    def _private(self, key: KeyInfo) -> Any:
        if key.key_id not in self._handles:
            matches = self._private_objects({Attribute.ID: key.key_id})
            if len(matches) != 1:
                raise KeyNotFound(f"key {key.label!r} is no longer on token {self.info.label!r}")
            self._handles[key.key_id] = matches[0]
        return self._handles[key.key_id]

    # --- managing keys --------------------------------------------------------------------

    def generate_key(
        self,
        label: str | None,
        key_type: KeyType,
        *,
        slot: str | None = None,
        force: bool = False,
    ) -> KeyInfo:
        """Generate a non-extractable key pair on the token and check the token honoured it.

        On a PIV token the key goes to `slot` (else the first free decryption slot, 9d first)
        and the module's fixed label replaces `label`; an occupied slot is overwritten only
        with `force`. That needs a session logged in with the management key.
        """
        known = self.known_capabilities()
        if known is not None and not known.can_generate(key_type):
            raise self._cannot_generate(key_type, known)
        if self.piv:
            key_id, label = self._piv_slot_for_new_key(slot, force), None
        else:
            if not label or len(label) > 128:
                raise TokenLayerError("a key label must be 1 to 128 characters")
            if self._private_objects({Attribute.LABEL: label}):
                raise DuplicateLabel(
                    f"token {self.info.label!r} already has a key labelled {label!r}"
                )
            key_id = secrets.token_bytes(16)
        variants = [known.template] if known else list(GENERAL_TEMPLATES)
        for n, variant in enumerate(variants, 1):
            try:
                with translated(self.info, f"generate {key_type} keys"):
                    generate_pair(
                        self._live(), key_type, variant, token=True, label=label, key_id=key_id
                    )
                break
            except (TokenCannot, TokenOperationFailed):
                if n < len(variants):
                    continue
                if known is None:  # learn why: a limit of the token is said as such
                    measured = self.capabilities()
                    if not measured.can_generate(key_type):
                        raise self._cannot_generate(key_type, measured) from None
                raise
        info = self._describe(self._private_objects({Attribute.ID: key_id})[0])
        if not info.protected:
            self._destroy(info)
            reason = ""
            caps = self.capabilities() if not info.local else None
            if caps is not None and not caps.reports_local:
                reason = (
                    f" {caps.why_not('local')}; an officer can allow this token model with "
                    f"'hsm-vault config set allow-unreported-local {self.info.model!r}'"
                )
            raise KeyPolicyError(
                f"token {self.info.label!r} did not keep the new key non-extractable "
                f"(local={info.local}, never_extractable={info.never_extractable}, "
                f"always_sensitive={info.always_sensitive}); the key was deleted.{reason}"
            )
        return info

    def _require_security_officer(self, what: str) -> None:
        if not self.security_officer:
            raise ManagementKeyRefused(
                f"{what} on PIV token {self.info.label!r} needs the management key",
                hint="Open the session with the management key (hsm-vault asks for it in "
                "'key generate' and 'key delete').",
            )

    def _occupied_slots(self) -> set[int]:
        session = self._live()
        return {
            bytes(obj[Attribute.ID])[0]
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
            for obj in session.get_objects({Attribute.CLASS: cls})
            if bytes(obj[Attribute.ID])
        }

    def _piv_slot_for_new_key(self, slot: str | None, force: bool) -> bytes:
        self._require_security_officer("key generation")
        requested = piv.slot_named(slot) if slot else None
        chosen = piv.choose_slot(
            requested, self._occupied_slots(), force=force, token=self.info.label
        )
        self._handles.pop(chosen.id_bytes, None)
        return chosen.id_bytes

    def _destroy(self, key: KeyInfo) -> None:
        self._handles.pop(key.key_id, None)
        session = self._live()
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for obj in list(session.get_objects({Attribute.CLASS: cls, Attribute.ID: key.key_id})):
                obj.destroy()

    def delete_key(self, key: KeyInfo) -> None:
        """Destroy both halves of a key pair. There is no undo.

        A PIV card cannot empty a slot (before YubiKey firmware 5.7, and not through ykcs11
        2.2, whose C_DestroyObject only removes the slot's certificate), so the slot is first
        overwritten with a fresh key that nobody uses: the old private key is gone for good.
        """
        with translated(self.info, "delete the key"):
            if key.slot is not None:
                self._require_security_officer("key deletion")
                generate_pair(
                    self._live(),
                    KeyType.EC_P256,
                    self.capabilities().template,
                    token=True,
                    key_id=key.key_id,
                )
            self._destroy(key)

    # --- operations -------------------------------------------------------------------------

    def sign(self, key: KeyInfo, message: bytes) -> bytes:
        """Sign `message` with the key's signature algorithm (DER ECDSA, or RSA-PSS-SHA256)."""
        private = self._private(key)
        algorithm = key.key_type.signature_algorithm
        known = self.known_capabilities()
        # A key that wants the PIN again for each signature (PIV slot 9c) gets it after
        # C_SignInit, as PKCS#11 2.40 says; python-pkcs11 does that when given pin=.
        if not hasattr(private, "sign"):  # python-pkcs11 offers sign() only with CKA_SIGN true
            raise cannot(
                self.info,
                f"sign with key {key.label!r}",
                known.why_not("sign") if known else "the key is not marked for signing",
                "Sign through another module for this token (for a YubiKey: Yubico's ykcs11, "
                "libykcs11.so), or with a key the token lets sign.",
            )
        pin = self._context_pin_for(private)
        if key.key_type.is_ec:
            with translated(self.info, f"sign with {algorithm}"):
                raw = private.sign(algorithm.digest(message), mechanism=Mechanism.ECDSA, pin=pin)
            return encode_ecdsa_signature(raw)
        modes = [known.pss] if known and known.pss else list(PSSMode)
        for n, mode in enumerate(modes, 1):
            try:
                with translated(self.info, f"sign with {algorithm}"):
                    return pss_sign(private, message, mode, pin)
            except TokenCannot:
                if n == len(modes):
                    raise
        raise AssertionError("unreachable")

    def _context_pin_for(self, private: Any) -> str | None:
        if not _bool_attr(private, Attribute.ALWAYS_AUTHENTICATE):
            return None
        if self._context_pin is None:
            raise TokenLayerError(
                f"key {private.label!r} on token {self.info.label!r} wants the PIN again for "
                "each use, and this session has none",
                hint="Use the key in a session logged in with the PIN.",
            )
        return self._context_pin.reveal()

    def attestation(self, key: KeyInfo) -> tuple[bytes, bytes] | None:
        """The key's attestation certificate and the device certificate that signed it (DER,
        unverified: `hsm_vault.attestation` verifies them), or None if the token offers none.
        """
        if key.slot is None:
            return None
        with translated(self.info, "read the attestation certificates"):
            return piv.attestation_certificates(self._live(), key.key_id)

    def ecdh(self, key: KeyInfo, peer_point: bytes) -> bytes:
        """ECDH1_DERIVE with KDF NULL: the raw shared secret (the x coordinate)."""
        if not key.key_type.is_ec:
            raise TokenOperationFailed(f"key {key.label!r} is not an EC key")
        known = self.known_capabilities()
        if known is not None and known.ecdh is None:
            raise self._cannot_decrypt(key.key_type, known)
        private = self._private(key)
        encodings = [known.ecdh] if known and known.ecdh else list(PointEncoding)
        refused: Exception | None = None
        failed: Exception | None = None
        for encoding in encodings:
            try:
                return ecdh_secret(private, key.key_type, peer_point, encoding)
            except UNSUPPORTED as exc:
                refused = exc
            except p11e.PKCS11Error as exc:
                # An off-curve or malformed point lands here too (SoftHSM says GeneralError).
                failed = exc
        if failed is None and refused is not None:  # every way refused: no ECDH on this token
            reason = f"ECDH1_DERIVE: the token answers {type(refused).__name__}"
            caps = known or Capabilities(profile=self.info.profile)
            raise self._cannot_decrypt(key.key_type, replace(caps, reasons={"ecdh": reason}))
        raise TokenOperationFailed(
            f"ECDH on token {self.info.label!r} failed: {type(failed).__name__}"
        )

    def rsa_oaep_decrypt(self, key: KeyInfo, ciphertext: bytes, hash_name: str) -> bytes:
        """RSA-OAEP decrypt on the token with MGF1 of the same hash and no label.

        If the token refuses, the key's own OAEP hash tells a hash the token does not take
        (`TokenCannot`) from a ciphertext that does not decrypt (`TokenOperationFailed`).
        """
        try:
            return self._oaep_decrypt(key, ciphertext, hash_name)
        except TokenOperationFailed:
            works = self.oaep_hash(key)
            if works != hash_name:
                raise cannot(
                    self.info,
                    f"do RSA-OAEP with {hash_name.upper()}",
                    f"it decrypts RSA-OAEP with {works.upper()} only",
                    "Ask the sender to encrypt to your card as published: it states the OAEP "
                    "hash this token takes.",
                ) from None
            raise

    def _oaep_decrypt(self, key: KeyInfo, ciphertext: bytes, hash_name: str) -> bytes:
        if key.key_type.is_ec:
            raise TokenOperationFailed(f"key {key.label!r} is not an RSA key")
        if hash_name not in OAEP_MECHANISMS:
            raise TokenCannot(f"unknown OAEP hash {hash_name!r}")
        mech, mgf = OAEP_MECHANISMS[hash_name]
        private = self._private(key)
        # Bad padding and a wrong key look alike here, on purpose.
        with translated(self.info, f"RSA-OAEP-{hash_name.upper()} decrypt"):
            return bytes(
                private.decrypt(
                    ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=(mech, mgf, None)
                )
            )

    def oaep_hash(self, key: KeyInfo) -> str:
        """The OAEP hash this token accepts for `key`: SHA-256 where it works, else SHA-1."""
        if key.key_id in self._oaep:
            return self._oaep[key.key_id]
        public = load_spki(key.spki_der)
        assert isinstance(public, rsa.RSAPublicKey)
        probe_value = secrets.token_bytes(32)
        refusals = []
        known = self.known_capabilities()
        for name in known.oaep_hashes if known and known.oaep_hashes else OAEP_PREFERENCE:
            chosen = hash_algorithm(name)
            ciphertext = public.encrypt(
                probe_value, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
            )
            try:
                if self._oaep_decrypt(key, ciphertext, name) == probe_value:
                    self._oaep[key.key_id] = name
                    return name
            except (TokenOperationFailed, TokenCannot) as exc:
                refusals.append(exc.message)
        caps = Capabilities(profile=self.info.profile, reasons={"oaep": "; ".join(refusals)})
        raise self._cannot_decrypt(key.key_type, caps)


def _ephemeral_point(key_type: KeyType) -> bytes:
    return (
        ec.generate_private_key(key_type.curve)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def _login_user(selected: SelectedToken, pin: PinSource | None) -> tuple[Any, Pin]:
    info = selected.info
    locked_hint = piv.locked_pin_hint() if selected.profile.piv else None
    if "USER_PIN_LOCKED" in info.flags:
        raise PinLocked(f"the user PIN of token {info.label!r} is locked", hint=locked_hint)
    user_pin = (pin or PinSource()).get(info.label)
    try:
        return selected.token.open(rw=True, user_pin=user_pin.reveal()), user_pin
    except p11e.PinIncorrect:
        after = refresh(selected)
        if "USER_PIN_LOCKED" in after.flags:
            raise PinLocked(
                f"wrong PIN for token {info.label!r}; the PIN is now locked", hint=locked_hint
            ) from None
        raise PinIncorrect(f"wrong PIN for token {info.label!r}; {after.pin_state}") from None
    except p11e.PinLocked:
        raise PinLocked(
            f"the user PIN of token {info.label!r} is locked", hint=locked_hint
        ) from None
    except p11e.PinLenRange:
        raise PinIncorrect(f"the PIN for token {info.label!r} has the wrong length") from None


def _login_security_officer(
    selected: SelectedToken, management_key: PinSource, allow_default: bool
) -> tuple[Any, bool]:
    """A session logged in with the PIV management key; whether it is the factory default."""
    info = selected.info
    key = management_key.get(info.label)
    is_default = piv.check_management_key(key, allow_default=allow_default)
    try:
        return selected.token.open(rw=True, so_pin=key.reveal().strip()), is_default
    except (p11e.PinIncorrect, p11e.PinLenRange, p11e.ArgumentsBad):
        raise ManagementKeyRefused(
            f"wrong management key for PIV token {info.label!r}",
            hint="Give the key set with 'yubico-piv-tool -a set-mgm-key' (48 hex digits); the "
            "PIV applet has no retry counter for it, so nothing is locked.",
        ) from None
    finally:
        del key


@contextmanager
def open_session(
    token: str | None = None,
    *,
    module: str | None = None,
    pin: PinSource | None = None,
    configured_module: str | None = None,
    configured_token: str | None = None,
    allow_unreported_local: tuple[str, ...] = (),
    management_key: PinSource | None = None,
    allow_default_management_key: bool = False,
) -> Iterator[TokenSession]:
    """Open a read-write session on one token and log in once; log out and close on exit.

    With `management_key`, a PIV token is logged in as security officer with its management
    key instead of the PIN (to generate and delete keys); other tokens ignore it.
    """
    selected = select_token(token or configured_token, module, configured_module)
    info = selected.info
    user_pin: Pin | None = None
    is_default = False
    try:
        if management_key is not None and selected.profile.piv:
            session, is_default = _login_security_officer(
                selected, management_key, allow_default_management_key
            )
        else:
            session, user_pin = _login_user(selected, pin)
    except p11e.UserAlreadyLoggedIn:
        raise TokenLayerError(
            f"this process is already logged in to token {info.label!r}",
            hint="Reuse the open session instead of opening a second one.",
        ) from None
    except p11e.PKCS11Error as exc:
        raise TokenLayerError(f"cannot open token {info.label!r}: {type(exc).__name__}") from None
    opened = TokenSession(
        session,
        selected,
        allow_unreported_local=allow_unreported_local,
        security_officer=user_pin is None,
        context_pin=user_pin if selected.profile.piv else None,
        default_management_key=is_default,
    )
    del user_pin
    try:
        yield opened
    finally:
        if os.getpid() == opened._pid:  # a forked child must not close its parent's session
            with suppress(p11e.PKCS11Error):
                session.close()
