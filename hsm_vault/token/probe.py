"""The capability probe: measure what a token does with throw-away session keys.

Each question is answered by doing the thing (C_GetMechanismList says what a slot lists, not
what works: tpm2 tokens made by C_InitToken sign with PSS but do not list it) and checking the
result in software. The keys are session objects (CKA_TOKEN false) and are destroyed at once.
"""

from __future__ import annotations

import hashlib
import secrets
from contextlib import suppress
from functools import partial
from typing import Any

from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import KDF, MGF, Attribute, Mechanism
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e
from pkcs11._pkcs11 import DeriveMixin  # type: ignore[attr-defined]
from pkcs11.constants import DEFAULT
from pkcs11.util.ec import encode_ecdsa_signature, encode_named_curve_parameters

from hsm_vault.algorithms import KeyType, hash_algorithm, load_spki
from hsm_vault.token.capabilities import (
    GENERAL_TEMPLATES,
    Capabilities,
    PointEncoding,
    PSSMode,
    TemplateVariant,
)
from hsm_vault.token.profiles import Profile

OAEP_MECHANISMS = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}
OAEP_PREFERENCE = ("sha256", "sha1")  # the hashes a card may state, best first
PSS_SHA256 = (Mechanism.SHA256, MGF.SHA256, 32)

# Usage attributes python-pkcs11 would otherwise set true or false on every key; a minimal
# template leaves them out (tpm2-pkcs11 refuses EC keys with CKA_DECRYPT/ENCRYPT set false).
_USAGES_PRIVATE = (Attribute.DECRYPT, Attribute.SIGN, Attribute.UNWRAP, Attribute.DERIVE)
_USAGES_PUBLIC = (Attribute.ENCRYPT, Attribute.VERIFY, Attribute.WRAP, Attribute.DERIVE)


def keypair_templates(
    key_type: KeyType, variant: TemplateVariant, *, token: bool
) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """(public, private) templates for a non-extractable key pair of `key_type`."""
    private: dict[Any, Any] = {
        Attribute.TOKEN: token,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
    }
    if variant is not TemplateVariant.PIV:  # PIV modules refuse the attribute (keys never leave)
        private[Attribute.EXTRACTABLE] = False
    public: dict[Any, Any] = {Attribute.TOKEN: token}
    if variant is not TemplateVariant.EXPLICIT:
        private.update(dict.fromkeys(_USAGES_PRIVATE, DEFAULT))
        public.update(dict.fromkeys(_USAGES_PUBLIC, DEFAULT))
    private[Attribute.SIGN] = True
    public[Attribute.VERIFY] = True
    if key_type.is_ec:
        private[Attribute.DERIVE] = True
    else:
        private[Attribute.DECRYPT] = True
        public[Attribute.ENCRYPT] = True
    return public, private


def generate_pair(
    session: Any,
    key_type: KeyType,
    variant: TemplateVariant,
    *,
    token: bool,
    label: str | None = None,
    key_id: bytes | None = None,
) -> tuple[Any, Any]:
    """C_GenerateKeyPair with hsm-vault's templates; returns (public, private) objects."""
    public, private = keypair_templates(key_type, variant, token=token)
    if key_type.is_ec:
        params = session.create_domain_parameters(
            P11KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(key_type.curve_oid)},
            local=True,
        )
        return params.generate_keypair(
            store=token,
            label=label,
            id=key_id,
            private_template=private,
            public_template=public,
        )
    return session.generate_keypair(
        P11KeyType.RSA,
        key_type.bits,
        store=token,
        label=label,
        id=key_id,
        private_template=private,
        public_template=public,
    )


def public_spki(public: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a PKCS#11 public key object (EC or RSA)."""
    if public.key_type == P11KeyType.EC:
        from asn1crypto.keys import ECDomainParameters

        curve = ECDomainParameters.load(public[Attribute.EC_PARAMS]).chosen.native
        key_type = KeyType.from_curve_name(curve)
        point = OctetString.load(public[Attribute.EC_POINT]).native
        key: Any = ec.EllipticCurvePublicKey.from_encoded_point(key_type.curve, point)
    elif public.key_type == P11KeyType.RSA:
        n = int.from_bytes(public[Attribute.MODULUS], "big")
        e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    else:
        raise ValueError(f"key type {public.key_type.name} is not supported")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ecdh_secret(
    private: Any, key_type: KeyType, peer_point: bytes, encoding: PointEncoding
) -> bytes:
    """CKM_ECDH1_DERIVE with KDF NULL into a readable session secret; its value."""
    point = OctetString(peer_point).dump() if encoding is PointEncoding.DER else peer_point
    # python-pkcs11 offers derive_key only on keys reporting CKA_DERIVE true; ykcs11 reports
    # false on every key and derives all the same.
    derive = getattr(private, "derive_key", None) or partial(DeriveMixin.derive_key, private)
    secret = derive(
        P11KeyType.GENERIC_SECRET,
        key_type.field_bytes * 8,
        mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(KDF.NULL, None, point),
        template={Attribute.TOKEN: False, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
    )
    try:
        return bytes(secret[Attribute.VALUE])
    finally:
        with suppress(p11e.PKCS11Error):
            secret.destroy()


def pss_sign(private: Any, message: bytes, mode: PSSMode, pin: str | None = None) -> bytes:
    """An RSA-PSS-SHA256 signature (salt 32) made the way `mode` says; `pin` for a key that
    wants a context-specific login."""
    if mode is PSSMode.ON_TOKEN:
        data, mechanism = message, Mechanism.SHA256_RSA_PKCS_PSS
    else:
        data, mechanism = hashlib.sha256(message).digest(), Mechanism.RSA_PKCS_PSS
    return bytes(private.sign(data, mechanism=mechanism, mechanism_param=PSS_SHA256, pin=pin))


def _reason(exc: Exception) -> str:
    return f"the token answers {type(exc).__name__}"


def _try_generate(
    session: Any, key_type: KeyType, reasons: dict[str, str]
) -> tuple[Any, TemplateVariant] | None:
    """A throw-away pair: a session object where the token makes them, else a token object
    (tpm2-pkcs11 refuses CKA_TOKEN false), which the caller destroys at once."""
    last: Exception | None = None
    for token in (False, True):
        for variant in GENERAL_TEMPLATES:
            try:
                made = generate_pair(
                    session, key_type, variant, token=token, label="hsm-vault-probe",
                    key_id=secrets.token_bytes(16),
                )  # fmt: skip
                return made, variant
            except p11e.PKCS11Error as exc:
                last = exc
    reasons[str(key_type)] = f"key generation: {_reason(last)}" if last else "not offered"
    return None


def _destroy(*objects: Any) -> None:
    for obj in objects:
        with suppress(p11e.PKCS11Error):
            obj.destroy()


def probe(session: Any, slot: Any, profile: Profile) -> Capabilities:
    """Measure a logged-in session's token; the profile's fixed facts are laid over."""
    if not profile.session_keys:
        return Capabilities(profile=profile.name).with_profile(profile)
    reasons: dict[str, str] = {}
    generates: list[KeyType] = []
    template = TemplateVariant.MINIMAL
    ecdh: PointEncoding | None = None
    ecdsa = False
    reports_local = True
    for key_type in (KeyType.EC_P256, KeyType.EC_P384):
        made = _try_generate(session, key_type, reasons)
        if made is None:
            continue
        (public, private), template = made
        generates.append(key_type)
        reports_local = reports_local and bool(_attr(private, Attribute.LOCAL))
        if key_type is KeyType.EC_P256:
            peer = ec.generate_private_key(key_type.curve)
            expected = peer.exchange(ec.ECDH(), load_spki(public_spki(public)))  # type: ignore[arg-type]
            point = peer.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            for encoding in PointEncoding:
                try:
                    if ecdh_secret(private, key_type, point, encoding) == expected:
                        ecdh = encoding
                        break
                    reasons["ecdh"] = "the derived secret does not match ECDH"
                except p11e.PKCS11Error as exc:
                    reasons["ecdh"] = f"ECDH1_DERIVE: {_reason(exc)}"
            ecdsa = _probe_ecdsa(private, public, reasons)
        _destroy(public, private)
    oaep: list[str] = []
    pss: PSSMode | None = None
    made = _try_generate(session, KeyType.RSA_2048, reasons)
    max_rsa_bits = 0
    if made is not None:
        (public, private), variant = made
        if not generates:
            template = variant
        reports_local = reports_local and bool(_attr(private, Attribute.LOCAL))
        max_rsa_bits = _rsa_max_bits(slot)
        generates.extend(
            t
            for t in (KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096)
            if t.bits <= max_rsa_bits
        )
        for t in (KeyType.RSA_3072, KeyType.RSA_4096):
            if t.bits > max_rsa_bits:
                reasons.setdefault(
                    str(t), f"the token generates RSA keys of at most {max_rsa_bits} bits"
                )
        spki = public_spki(public)
        oaep = _probe_oaep(private, spki, reasons)
        pss = _probe_pss(private, spki, reasons)
        _destroy(public, private)
    if not reports_local:
        reasons.setdefault("local", "the token reports CKA_LOCAL false for keys it generated")
    return Capabilities(
        profile=profile.name,
        generates=tuple(generates),
        ecdh=ecdh,
        oaep_hashes=tuple(oaep),
        pss=pss,
        ecdsa=ecdsa,
        template=template,
        reports_local=reports_local,
        max_rsa_bits=max_rsa_bits or 4096,
        reasons=reasons,
    ).with_profile(profile)


def _attr(obj: Any, attribute: Attribute) -> Any:
    try:
        return obj[attribute]
    except p11e.PKCS11Error:
        return None


def _rsa_max_bits(slot: Any) -> int:
    try:
        info = slot.get_mechanism_info(Mechanism.RSA_PKCS_KEY_PAIR_GEN)
    except p11e.PKCS11Error:
        return 4096
    return int(info.max_key_length) if info.max_key_length else 4096


def _probe_ecdsa(private: Any, public: Any, reasons: dict[str, str]) -> bool:
    message = b"hsm-vault probe"
    try:
        raw = private.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA)
        key = load_spki(public_spki(public))
        key.verify(encode_ecdsa_signature(raw), message, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg, arg-type]
        return True
    except Exception as exc:  # a PKCS#11 refusal or a signature that does not verify
        reasons["ecdsa"] = f"ECDSA: {_reason(exc)}"
        return False


def _probe_oaep(private: Any, spki: bytes, reasons: dict[str, str]) -> list[str]:
    public = load_spki(spki)
    works = []
    for name in OAEP_PREFERENCE:
        chosen = hash_algorithm(name)
        probe_value = secrets.token_bytes(32)
        ciphertext = public.encrypt(  # type: ignore[union-attr]
            probe_value, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
        )
        mech, mgf = OAEP_MECHANISMS[name]
        try:
            plain = private.decrypt(
                ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=(mech, mgf, None)
            )
        except p11e.PKCS11Error as exc:
            reasons.setdefault("oaep", f"RSA-OAEP-{name.upper()}: {_reason(exc)}")
            continue
        if bytes(plain) == probe_value:
            works.append(name)
    return works


def _probe_pss(private: Any, spki: bytes, reasons: dict[str, str]) -> PSSMode | None:
    public = load_spki(spki)
    assert isinstance(public, rsa.RSAPublicKey)
    message = b"hsm-vault probe"
    for mode in PSSMode:
        try:
            signature = pss_sign(private, message, mode)
            public.verify(
                signature,
                message,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
            return mode
        except Exception as exc:  # a PKCS#11 refusal or a signature that does not verify
            reasons["pss"] = f"{mode}: {_reason(exc)}"
    return None
