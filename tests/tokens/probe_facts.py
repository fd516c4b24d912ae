"""Measure what one PKCS#11 token really does, with python-pkcs11 directly (not hsm-vault).

    HSM_VAULT_PIN=... HSM_VAULT_SO_PIN=... python -m tests.tokens.probe_facts MODULE LABEL

Prints one JSON object: token strings, the mechanism list, and for each probe "ok" or the
PKCS#11 error it returned. Keys it makes are deleted again. The facts feed the token profiles
(docs/tokens.md); this is a measuring tool, not a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from typing import Any

import pkcs11
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import KDF, MGF, Attribute, Mechanism, ObjectClass, TokenFlag
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e
from pkcs11.constants import DEFAULT
from pkcs11.util.ec import encode_ecdsa_signature, encode_named_curve_parameters

CURVES = {"p256": ("1.2.840.10045.3.1.7", ec.SECP256R1()), "p384": ("1.3.132.0.34", ec.SECP384R1())}
HASHES = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1, hashes.SHA1()),
    "sha256": (Mechanism.SHA256, MGF.SHA256, hashes.SHA256()),
    "sha384": (Mechanism.SHA384, MGF.SHA384, hashes.SHA384()),
    "sha512": (Mechanism.SHA512, MGF.SHA512, hashes.SHA512()),
}
RELEVANT = (
    "EC_KEY_PAIR_GEN",
    "RSA_PKCS_KEY_PAIR_GEN",
    "ECDSA",
    "ECDSA_SHA256",
    "ECDH1_DERIVE",
    "RSA_PKCS_OAEP",
    "RSA_PKCS_PSS",
    "SHA256_RSA_PKCS_PSS",
    "RSA_PKCS",
    "RSA_X_509",
    "AES_KEY_WRAP",
    "AES_KEY_WRAP_PAD",
    "GENERIC_SECRET_KEY_GEN",
)
FLAGS_OF_INTEREST = ("local", "never_extractable", "always_sensitive", "sensitive", "extractable")


def err(exc: BaseException) -> str:
    return type(exc).__name__


def attrs(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FLAGS_OF_INTEREST:
        try:
            out[name] = bool(obj[getattr(Attribute, name.upper())])
        except p11e.PKCS11Error as exc:
            out[name] = err(exc)
    return out


def private_template(**extra: Any) -> dict[Attribute, Any]:
    base = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
    }
    base.update({getattr(Attribute, k.upper()): v for k, v in extra.items()})
    return base


def public_template(**extra: Any) -> dict[Attribute, Any]:
    base = {Attribute.TOKEN: True, Attribute.VERIFY: True}
    base.update({getattr(Attribute, k.upper()): v for k, v in extra.items()})
    return base


def cleanup(session: Any, key_id: bytes) -> None:
    for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        for obj in list(session.get_objects({Attribute.CLASS: cls, Attribute.ID: key_id})):
            obj.destroy()


def gen_ec(session: Any, curve: str, priv: dict, pub: dict) -> tuple[Any, Any, bytes]:
    key_id = secrets.token_bytes(8)
    params = session.create_domain_parameters(
        P11KeyType.EC,
        {Attribute.EC_PARAMS: encode_named_curve_parameters(CURVES[curve][0])},
        local=True,
    )
    pub_k, priv_k = params.generate_keypair(
        store=True,
        label="probe-" + key_id.hex(),
        id=key_id,
        private_template=priv,
        public_template=pub,
    )
    return pub_k, priv_k, key_id


def gen_rsa(session: Any, bits: int, priv: dict, pub: dict) -> tuple[Any, Any, bytes]:
    key_id = secrets.token_bytes(8)
    pub_k, priv_k = session.generate_keypair(
        P11KeyType.RSA,
        bits,
        store=True,
        label="probe-" + key_id.hex(),
        id=key_id,
        private_template=priv,
        public_template=pub,
    )
    return pub_k, priv_k, key_id


# python-pkcs11 fills ENCRYPT/DECRYPT/WRAP/UNWRAP from default capabilities (False for EC);
# the value U removes an attribute from the template altogether (pkcs11.constants.DEFAULT).
U = DEFAULT
_EC_UNSET_PRIV = dict(decrypt=U, unwrap=U)
_EC_UNSET_PUB = dict(encrypt=U, wrap=U)
EC_TEMPLATES = {
    "sign+derive (hsm-vault today)": (dict(derive=True), {}),
    "sign+derive, ENCRYPT/DECRYPT/WRAP/UNWRAP unset": (
        dict(derive=True, **_EC_UNSET_PRIV),
        dict(_EC_UNSET_PUB),
    ),
    "sign only, ENCRYPT/DECRYPT/WRAP/UNWRAP/DERIVE unset": (
        dict(derive=U, **_EC_UNSET_PRIV),
        dict(_EC_UNSET_PUB),
    ),
    "sign+derive, only WRAP/UNWRAP unset": (dict(derive=True, unwrap=U), dict(wrap=U)),
    "sign+derive, only ENCRYPT/DECRYPT unset": (dict(derive=True, decrypt=U), dict(encrypt=U)),
    "sign only (DERIVE=False)": (dict(derive=False), {}),
}
RSA_TEMPLATES = {
    "sign+decrypt (hsm-vault today)": (dict(decrypt=True), dict(encrypt=True)),
    "sign+decrypt+unwrap": (dict(decrypt=True, unwrap=True), dict(encrypt=True, wrap=True)),
}


def probe_ec(session: Any, curve: str, facts: dict) -> None:
    made = None
    for name, (priv, pub) in EC_TEMPLATES.items():
        try:
            pub_k, priv_k, key_id = gen_ec(
                session, curve, private_template(**priv), public_template(**pub)
            )
        except p11e.PKCS11Error as exc:
            facts[f"ec-{curve} keygen: {name}"] = err(exc)
            continue
        facts[f"ec-{curve} keygen: {name}"] = "ok " + json.dumps(attrs(priv_k))
        if made is None and name.startswith("sign+derive"):
            made = (pub_k, priv_k, key_id)
        else:
            cleanup(session, key_id)
    if made is None:
        return
    pub_k, priv_k, key_id = made
    try:
        curve_obj = CURVES[curve][1]
        point = OctetString.load(pub_k[Attribute.EC_POINT]).native
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve_obj, point)
        digest = hashlib.sha256(b"m").digest() if curve == "p256" else hashlib.sha384(b"m").digest()
        algo = hashes.SHA256() if curve == "p256" else hashes.SHA384()
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        for label, mech, data in (
            ("ECDSA over software digest", Mechanism.ECDSA, digest),
            ("ECDSA_SHA256 on token", Mechanism.ECDSA_SHA256, b"m"),
        ):
            try:
                sig = encode_ecdsa_signature(priv_k.sign(data, mechanism=mech))
                if mech == Mechanism.ECDSA:
                    public.verify(sig, digest, ec.ECDSA(Prehashed(algo)))
                else:
                    public.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
                facts[f"ec-{curve} {label}"] = "ok (verifies)"
            except Exception as exc:
                facts[f"ec-{curve} {label}"] = err(exc)
        peer = ec.generate_private_key(curve_obj)
        raw = peer.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        expected = peer.exchange(ec.ECDH(), public)
        size = len(expected)
        for form, peer_point in (
            ("raw point", raw),
            ("DER OCTET STRING point", OctetString(raw).dump()),
        ):
            for readable in (True, False):
                target = "extractable" if readable else "sensitive"
                what = f"ec-{curve} ECDH1_DERIVE KDF NULL, {form}, GENERIC_SECRET {target}"
                try:
                    secret = priv_k.derive_key(
                        P11KeyType.GENERIC_SECRET,
                        size * 8,
                        mechanism=Mechanism.ECDH1_DERIVE,
                        mechanism_param=(KDF.NULL, None, peer_point),
                        template={
                            Attribute.TOKEN: False,
                            Attribute.SENSITIVE: not readable,
                            Attribute.EXTRACTABLE: readable,
                        },
                    )
                except p11e.PKCS11Error as exc:
                    facts[what] = "derive: " + err(exc)
                    continue
                try:
                    value = bytes(secret[Attribute.VALUE])
                    facts[what] = "ok, value " + ("matches" if value == expected else "DIFFERS")
                except p11e.PKCS11Error as exc:
                    facts[what] = "derived, value unreadable: " + err(exc)
                secret.destroy()
    finally:
        cleanup(session, key_id)


def probe_rsa(session: Any, bits: int, facts: dict, full: bool) -> None:
    made = None
    for name, (priv, pub) in RSA_TEMPLATES.items():
        if made is not None and not full:
            break
        try:
            pub_k, priv_k, key_id = gen_rsa(
                session, bits, private_template(**priv), public_template(**pub)
            )
        except p11e.PKCS11Error as exc:
            facts[f"rsa-{bits} keygen: {name}"] = err(exc)
            continue
        facts[f"rsa-{bits} keygen: {name}"] = "ok " + json.dumps(attrs(priv_k))
        if made is None:
            made = (pub_k, priv_k, key_id)
        else:
            cleanup(session, key_id)
    if made is None or not full:
        if made:
            cleanup(session, made[2])
        return
    pub_k, priv_k, key_id = made
    try:
        n = int.from_bytes(pub_k[Attribute.MODULUS], "big")
        e = int.from_bytes(pub_k[Attribute.PUBLIC_EXPONENT], "big")
        public = rsa.RSAPublicNumbers(e, n).public_key()
        for hname, (mech, mgf, algo) in HASHES.items():
            probe = secrets.token_bytes(32)
            ct = public.encrypt(
                probe, padding.OAEP(mgf=padding.MGF1(algo), algorithm=algo, label=None)
            )
            try:
                out = bytes(
                    priv_k.decrypt(
                        ct, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=(mech, mgf, None)
                    )
                )
                facts[f"rsa-{bits} OAEP {hname} decrypt"] = (
                    "ok" if out == probe else "WRONG PLAINTEXT"
                )
            except p11e.PKCS11Error as exc:
                facts[f"rsa-{bits} OAEP {hname} decrypt"] = err(exc)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        for label, mech, data in (
            ("SHA256_RSA_PKCS_PSS (hash on token)", Mechanism.SHA256_RSA_PKCS_PSS, b"m"),
            (
                "RSA_PKCS_PSS over software SHA-256",
                Mechanism.RSA_PKCS_PSS,
                hashlib.sha256(b"m").digest(),
            ),
        ):
            try:
                sig = bytes(
                    priv_k.sign(
                        data, mechanism=mech, mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32)
                    )
                )
                if mech == Mechanism.RSA_PKCS_PSS:
                    public.verify(sig, data, pss, Prehashed(hashes.SHA256()))
                else:
                    public.verify(sig, b"m", pss, hashes.SHA256())
                facts[f"rsa-{bits} {label}"] = "ok (verifies)"
            except Exception as exc:
                facts[f"rsa-{bits} {label}"] = err(exc)
    finally:
        cleanup(session, key_id)


def token_strings(tok: Any) -> dict[str, Any]:
    serial = tok.serial.decode() if isinstance(tok.serial, bytes) else tok.serial
    return {
        "label": tok.label,
        "manufacturer": tok.manufacturer_id,
        "model": tok.model,
        "serial": serial,
        "hw": str(tok.hardware_version),
        "fw": str(tok.firmware_version),
        "flags": [f.name for f in TokenFlag if f.name and f in tok.flags],
        "slot_manufacturer": tok.slot.manufacturer_id,
        "slot_description": tok.slot.slot_description,
    }


def main(module: str, label: str, rsa_sizes: list[int]) -> dict[str, Any]:
    pin, so_pin = os.environ["HSM_VAULT_PIN"], os.environ.get("HSM_VAULT_SO_PIN", "")
    lib = pkcs11.lib(module)
    facts: dict[str, Any] = {
        "library": f"{lib.manufacturer_id} {lib.library_description} {lib.library_version}"
    }
    tok = next(t for t in lib.get_tokens(token_label=label))
    facts["token"] = token_strings(tok)
    mechs = {m.name if hasattr(m, "name") else str(m) for m in tok.slot.get_mechanisms()}
    facts["mechanisms listed"] = sorted(m for m in RELEVANT if m in mechs)
    try:
        tok.open(user_pin="wrong-" + pin[:2]).close()
        facts["wrong PIN"] = "ACCEPTED?"
    except p11e.PKCS11Error as exc:
        facts["wrong PIN"] = err(exc)
    facts["flags after wrong PIN"] = token_strings(
        next(t for t in lib.get_tokens(token_label=label))
    )["flags"]
    if so_pin:
        try:
            tok.open(user_pin=so_pin).close()
            facts["C_Login(USER, so_pin)"] = "ACCEPTED"
        except p11e.PKCS11Error as exc:
            facts["C_Login(USER, so_pin)"] = err(exc)
        try:
            tok.open(rw=True, so_pin=so_pin).close()
            facts["C_Login(SO, so_pin)"] = "ok"
        except p11e.PKCS11Error as exc:
            facts["C_Login(SO, so_pin)"] = err(exc)
    with tok.open(rw=True, user_pin=pin) as session:
        facts["flags after good login"] = token_strings(tok)["flags"]
        if "EC_KEY_PAIR_GEN" in mechs or os.environ.get("PROBE_EC_ANYWAY"):
            for curve in CURVES:
                probe_ec(session, curve, facts)
        else:
            try:
                gen_ec(session, "p256", private_template(derive=True), public_template())
                facts["ec keygen (not listed)"] = "ACCEPTED"
            except p11e.PKCS11Error as exc:
                facts["ec keygen (not listed)"] = err(exc)
        for i, bits in enumerate(rsa_sizes):
            probe_rsa(session, bits, facts, full=i == 0)
    return facts


if __name__ == "__main__":
    sizes = [int(b) for b in os.environ.get("PROBE_RSA", "2048,3072,4096").split(",")]
    print(json.dumps(main(sys.argv[1], sys.argv[2], sizes), indent=1))
