"""Sessions on a token: one login serves every operation in a `with open_session(...)` block.

This module and its siblings are the only users of python-pkcs11. PKCS#11 errors are turned
into hsm-vault errors here, and nothing returned to callers is a pkcs11 object.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pkcs11
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import KDF, MGF, Attribute, Mechanism, ObjectClass, TokenFlag
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ecdsa_signature, encode_named_curve_parameters

from hsm_vault.algorithms import KeyType, hash_algorithm, key_type_of, spki_fingerprint
from hsm_vault.errors import (
    AmbiguousKey,
    AmbiguousToken,
    DuplicateLabel,
    KeyNotFound,
    KeyPolicyError,
    ModuleLoadError,
    PinIncorrect,
    PinLocked,
    TokenLayerError,
    TokenNotFound,
    TokenOperationFailed,
    UnsupportedMechanism,
)
from hsm_vault.token.module import ModuleChoice, resolve_module
from hsm_vault.token.pin import PinSource
from hsm_vault.token.uri import PKCS11URI, format_uri, parse_uri

_CURVE_OIDS = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34"}
_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_OAEP_MECH = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}
OAEP_PREFERENCE = ("sha256", "sha1")

# Mechanisms hsm-vault uses, for `token info`.
RELEVANT_MECHANISMS = {
    Mechanism.EC_KEY_PAIR_GEN: "generate EC keys",
    Mechanism.RSA_PKCS_KEY_PAIR_GEN: "generate RSA keys",
    Mechanism.ECDSA: "ECDSA sign (EC cards, file signatures)",
    Mechanism.ECDH1_DERIVE: "ECDH unwrap (EC recipients)",
    Mechanism.RSA_PKCS_OAEP: "RSA-OAEP unwrap (RSA recipients)",
    Mechanism.SHA256_RSA_PKCS_PSS: "RSA-PSS-SHA256 sign (RSA cards, file signatures)",
}

# python-pkcs11 loads a module once per path and process; after fork() the child must
# re-initialise it before use (PKCS#11 forbids sharing a library instance across a fork).
_loaded_in_pid: dict[str, int] = {}


def load_library(choice: ModuleChoice) -> Any:
    """Load (or re-initialise after a fork) the PKCS#11 module."""
    try:
        lib = pkcs11.lib(choice.path)
    except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
        raise ModuleLoadError(
            f"cannot load PKCS#11 module {choice.path} (from {choice.source}): {exc}"
        ) from None
    pid = os.getpid()
    if _loaded_in_pid.setdefault(choice.path, pid) != pid:
        lib.reinitialize()
        _loaded_in_pid[choice.path] = pid
    return lib


@dataclass(frozen=True)
class TokenInfo:
    """What a token says about itself."""

    label: str
    manufacturer: str
    model: str
    serial: str
    flags: tuple[str, ...]
    slot_id: int
    module: str

    @property
    def uri(self) -> str:
        return format_uri(PKCS11URI(token=self.label, serial=self.serial or None))

    @property
    def pin_state(self) -> str:
        """A phrase for the user PIN's try counter, from the token's flags."""
        if "USER_PIN_LOCKED" in self.flags:
            return "the token reports the user PIN locked"
        if "USER_PIN_FINAL_TRY" in self.flags:
            return "the token reports one try left before it locks"
        if "USER_PIN_COUNT_LOW" in self.flags:
            return "the token reports few tries left"
        return "the token does not report a low try count"


def _token_info(token: Any, module: str) -> TokenInfo:
    flags = tuple(f.name for f in TokenFlag if f.name and f in token.flags)
    serial = token.serial
    if isinstance(serial, bytes):
        serial = serial.decode("ascii", "replace")
    return TokenInfo(
        label=token.label,
        manufacturer=token.manufacturer_id,
        model=token.model,
        serial=serial.strip(),
        flags=flags,
        slot_id=token.slot.slot_id,
        module=module,
    )


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

    @property
    def uri(self) -> str:
        return format_uri(PKCS11URI(token=self.token.label, object=self.label, id=self.key_id))

    @property
    def fingerprint(self) -> str:
        return spki_fingerprint(self.spki_der)

    @property
    def protected(self) -> bool:
        """True if the token says the private key was made on it and can never leave it."""
        return (
            self.local
            and self.never_extractable
            and self.always_sensitive
            and self.sensitive
            and not self.extractable
        )

    def public_pem(self) -> bytes:
        return serialization.load_der_public_key(self.spki_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _spki_from_public(pub: Any) -> tuple[bytes, KeyType]:
    if pub.key_type == P11KeyType.EC:
        params = pub[Attribute.EC_PARAMS]
        from asn1crypto.keys import ECDomainParameters

        curve = ECDomainParameters.load(params).chosen.native
        if curve not in _CURVES:
            raise TokenOperationFailed(f"key uses curve {curve}, which hsm-vault does not support")
        point = OctetString.load(pub[Attribute.EC_POINT]).native
        key: Any = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve], point)
    elif pub.key_type == P11KeyType.RSA:
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    else:
        raise TokenOperationFailed(f"key type {pub.key_type.name} is not supported")
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki, key_type_of(key)


def _bool_attr(obj: Any, attr: Attribute) -> bool:
    try:
        return bool(obj[attr])
    except p11e.PKCS11Error:
        return False


class TokenSession:
    """An open, logged-in session on one token. Use through `open_session`."""

    def __init__(self, session: Any, info: TokenInfo) -> None:
        self._session = session
        self._pid = os.getpid()
        self.info = info
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
        spki, key_type = _spki_from_public(public)
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
        return KeyInfo(
            label=private.label or "",
            key_id=bytes(private[Attribute.ID]),
            key_type=key_type,
            spki_der=spki,
            token=self.info,
            local=_bool_attr(private, Attribute.LOCAL),
            never_extractable=_bool_attr(private, Attribute.NEVER_EXTRACTABLE),
            always_sensitive=_bool_attr(private, Attribute.ALWAYS_SENSITIVE),
            sensitive=_bool_attr(private, Attribute.SENSITIVE),
            extractable=_bool_attr(private, Attribute.EXTRACTABLE),
            capabilities=caps,
        )

    def keys(self) -> list[KeyInfo]:
        """Every key pair on the token (private key with its public key), sorted by label."""
        found = []
        for private in self._private_objects():
            try:
                found.append(self._describe(private))
            except (KeyNotFound, TokenOperationFailed):
                continue  # not a pair hsm-vault can use: leave it out of the list
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

    def generate_key(self, label: str, key_type: KeyType) -> KeyInfo:
        """Generate a non-extractable key pair on the token and check the token honoured it."""
        if not label or len(label) > 128:
            raise TokenLayerError("a key label must be 1 to 128 characters")
        if self._private_objects({Attribute.LABEL: label}):
            raise DuplicateLabel(f"token {self.info.label!r} already has a key labelled {label!r}")
        key_id = secrets.token_bytes(16)
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        public_template: dict[Attribute, Any] = {Attribute.TOKEN: True, Attribute.VERIFY: True}
        session = self._live()
        try:
            if key_type.is_ec:
                private_template[Attribute.DERIVE] = True
                params = session.create_domain_parameters(
                    P11KeyType.EC,
                    {
                        Attribute.EC_PARAMS: encode_named_curve_parameters(
                            _CURVE_OIDS[key_type.curve_name]
                        )
                    },
                    local=True,
                )
                params.generate_keypair(
                    store=True,
                    label=label,
                    id=key_id,
                    private_template=private_template,
                    public_template=public_template,
                )
            else:
                private_template[Attribute.DECRYPT] = True
                public_template[Attribute.ENCRYPT] = True
                session.generate_keypair(
                    P11KeyType.RSA,
                    key_type.bits,
                    store=True,
                    label=label,
                    id=key_id,
                    private_template=private_template,
                    public_template=public_template,
                )
        except p11e.MechanismInvalid as exc:
            raise UnsupportedMechanism(f"token cannot generate {key_type} keys") from exc
        except p11e.PKCS11Error as exc:
            raise TokenOperationFailed(f"key generation failed: {type(exc).__name__}") from exc
        info = self._describe(self._private_objects({Attribute.ID: key_id})[0])
        if not info.protected:
            self._destroy(info)
            raise KeyPolicyError(
                f"token {self.info.label!r} did not keep the new key non-extractable "
                f"(local={info.local}, never_extractable={info.never_extractable}, "
                f"always_sensitive={info.always_sensitive}); the key was deleted"
            )
        return info

    def _destroy(self, key: KeyInfo) -> None:
        self._handles.pop(key.key_id, None)
        session = self._live()
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for obj in list(session.get_objects({Attribute.CLASS: cls, Attribute.ID: key.key_id})):
                obj.destroy()

    def delete_key(self, key: KeyInfo) -> None:
        """Destroy both halves of a key pair. There is no undo."""
        try:
            self._destroy(key)
        except p11e.PKCS11Error as exc:
            raise TokenOperationFailed(f"could not delete key: {type(exc).__name__}") from exc

    # --- operations -------------------------------------------------------------------------

    def sign(self, key: KeyInfo, message: bytes) -> bytes:
        """Sign `message` with the key's signature algorithm (DER ECDSA, or RSA-PSS-SHA256)."""
        private = self._private(key)
        algorithm = key.key_type.signature_algorithm
        try:
            if key.key_type.is_ec:
                raw = private.sign(algorithm.digest(message), mechanism=Mechanism.ECDSA)
                return encode_ecdsa_signature(raw)
            return bytes(
                private.sign(
                    message,
                    mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                    mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32),
                )
            )
        except p11e.MechanismInvalid as exc:
            raise UnsupportedMechanism(f"token cannot sign with {algorithm}") from exc
        except p11e.PKCS11Error as exc:
            raise TokenOperationFailed(f"signing failed: {type(exc).__name__}") from exc

    def ecdh(self, key: KeyInfo, peer_point: bytes) -> bytes:
        """ECDH1_DERIVE with KDF NULL: the raw shared secret (the x coordinate)."""
        if not key.key_type.is_ec:
            raise TokenOperationFailed(f"key {key.label!r} is not an EC key")
        private = self._private(key)
        size = (key.key_type.bits + 7) // 8
        try:
            secret = private.derive_key(
                P11KeyType.GENERIC_SECRET,
                size * 8,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(KDF.NULL, None, peer_point),
                template={
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: False,
                    Attribute.EXTRACTABLE: True,
                },
            )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                secret.destroy()
        except p11e.MechanismInvalid as exc:
            raise UnsupportedMechanism("token cannot do ECDH1_DERIVE") from exc
        except p11e.PKCS11Error as exc:
            # An off-curve or malformed point lands here too (SoftHSM says GeneralError).
            raise TokenOperationFailed(f"ECDH on the token failed: {type(exc).__name__}") from exc

    def rsa_oaep_decrypt(self, key: KeyInfo, ciphertext: bytes, hash_name: str) -> bytes:
        """RSA-OAEP decrypt on the token with MGF1 of the same hash and no label."""
        if key.key_type.is_ec:
            raise TokenOperationFailed(f"key {key.label!r} is not an RSA key")
        if hash_name not in _OAEP_MECH:
            raise UnsupportedMechanism(f"unknown OAEP hash {hash_name!r}")
        mech, mgf = _OAEP_MECH[hash_name]
        private = self._private(key)
        try:
            return bytes(
                private.decrypt(
                    ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=(mech, mgf, None)
                )
            )
        except p11e.MechanismInvalid as exc:
            raise UnsupportedMechanism("token cannot do RSA-OAEP") from exc
        except p11e.PKCS11Error as exc:
            # Bad padding and a wrong key look alike here, on purpose.
            raise TokenOperationFailed(f"RSA-OAEP decrypt failed: {type(exc).__name__}") from exc

    def oaep_hash(self, key: KeyInfo) -> str:
        """The OAEP hash this token accepts for `key`: SHA-256 where it works, else SHA-1."""
        if key.key_id in self._oaep:
            return self._oaep[key.key_id]
        public = serialization.load_der_public_key(key.spki_der)
        assert isinstance(public, rsa.RSAPublicKey)
        probe = secrets.token_bytes(32)
        for name in OAEP_PREFERENCE:
            chosen = hash_algorithm(name)
            ciphertext = public.encrypt(
                probe, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
            )
            try:
                if self.rsa_oaep_decrypt(key, ciphertext, name) == probe:
                    self._oaep[key.key_id] = name
                    return name
            except (TokenOperationFailed, UnsupportedMechanism):
                continue
        raise UnsupportedMechanism(f"token {self.info.label!r} accepts no RSA-OAEP hash we use")


def _select_token(lib: Any, choice: ModuleChoice, token: str | None) -> Any:
    selector: dict[str, str] = {}
    if token and token.lower().startswith("pkcs11:"):
        selector = parse_uri(token).token_attributes
    elif token:
        selector = {"token_label": token}
    try:
        tokens = [t for t in lib.get_tokens(**selector) if t.flags & TokenFlag.TOKEN_INITIALIZED]
    except p11e.PKCS11Error as exc:
        raise TokenLayerError(f"cannot list tokens of {choice.path}: {type(exc).__name__}") from exc
    if not tokens:
        what = f"token {token!r}" if token else "an initialised token"
        raise TokenNotFound(f"no {what} in module {choice.path}")
    if len(tokens) > 1:
        labels = ", ".join(sorted(t.label for t in tokens))
        raise AmbiguousToken(f"several tokens match ({labels}); choose one with --token")
    return tokens[0]


def list_tokens(module: str | None = None, configured: str | None = None) -> list[TokenInfo]:
    """Every token in the module's slots (initialised or not). No login."""
    choice = resolve_module(module, configured)
    lib = load_library(choice)
    try:
        return [_token_info(t, choice.path) for t in lib.get_tokens()]
    except p11e.PKCS11Error as exc:
        raise TokenLayerError(f"cannot list tokens: {type(exc).__name__}") from exc


def token_mechanisms(
    token: str | None, module: str | None = None, configured: str | None = None
) -> tuple[TokenInfo, dict[str, bool]]:
    """The token, and which of the mechanisms hsm-vault uses its slot offers. No login."""
    choice = resolve_module(module, configured)
    lib = load_library(choice)
    tok = _select_token(lib, choice, token)
    offered = tok.slot.get_mechanisms()
    return _token_info(tok, choice.path), {
        f"{m.name}: {use}": m in offered for m, use in RELEVANT_MECHANISMS.items()
    }


@contextmanager
def open_session(
    token: str | None = None,
    *,
    module: str | None = None,
    pin: PinSource | None = None,
    configured_module: str | None = None,
    configured_token: str | None = None,
) -> Iterator[TokenSession]:
    """Open a read-write session on one token and log in once; log out and close on exit."""
    choice = resolve_module(module, configured_module)
    lib = load_library(choice)
    tok = _select_token(lib, choice, token or configured_token)
    info = _token_info(tok, choice.path)
    if "USER_PIN_LOCKED" in info.flags:
        raise PinLocked(f"the user PIN of token {info.label!r} is locked")
    user_pin = (pin or PinSource()).get(info.label)
    try:
        session = tok.open(rw=True, user_pin=user_pin.reveal())
    except p11e.PinIncorrect:
        after = _token_info(lib.get_token(token_serial=tok.serial), choice.path)
        if "USER_PIN_LOCKED" in after.flags:
            raise PinLocked(f"wrong PIN for token {info.label!r}; the PIN is now locked") from None
        raise PinIncorrect(f"wrong PIN for token {info.label!r}; {after.pin_state}") from None
    except p11e.PinLocked:
        raise PinLocked(f"the user PIN of token {info.label!r} is locked") from None
    except p11e.PinLenRange:
        raise PinIncorrect(f"the PIN for token {info.label!r} has the wrong length") from None
    except p11e.UserAlreadyLoggedIn:
        raise TokenLayerError(
            f"this process is already logged in to token {info.label!r}",
            hint="Reuse the open session instead of opening a second one.",
        ) from None
    except p11e.PKCS11Error as exc:
        raise TokenLayerError(f"cannot open token {info.label!r}: {type(exc).__name__}") from None
    finally:
        del user_pin
    opened = TokenSession(session, info)
    try:
        yield opened
    finally:
        if os.getpid() == opened._pid:  # a forked child must not close its parent's session
            with suppress(p11e.PKCS11Error):
                session.close()
