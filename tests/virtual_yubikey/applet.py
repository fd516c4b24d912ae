"""A YubiKey 5 PIV applet: command APDU in, response APDU out.

What it answers follows what Yubico's libykpiv/ykcs11 (yubico-piv-tool 2.2), OpenSC's PIV driver
(0.23) and yubikit send to a real YubiKey 5; the wire formats are those of NIST SP 800-73-4 and
Yubico's PIV extensions (GET VERSION, GET SERIAL, GET METADATA, ATTEST, SET MGMKEY, IMPORT KEY,
RESET, SET PIN RETRIES). Touch is always granted. Responses longer than the client's Le are
returned in parts (SW 61xx + GET RESPONSE); command chaining (CLA bit 0x10) is accepted.
"""

from __future__ import annotations

import datetime
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from . import tlv
from .state import (
    ATTESTATION_SLOT,
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    EC_CURVES,
    KEY_SLOTS,
    MGM_3DES,
    MGM_KEY_LENGTHS,
    OBJECT_OF_SLOT,
    ORIGIN_GENERATED,
    ORIGIN_IMPORTED,
    PIN_ALWAYS,
    PIN_NEVER,
    RSA_BITS,
    TOUCH_NEVER,
    DeviceState,
    SlotKey,
    default_pin_policy,
    pad_pin,
)

# The ATR of a YubiKey 5 over USB (libykpiv's YKPIV_ATR_YK5; OpenSC reads "YubiKey" from it).
ATR = bytes.fromhex("3bfd1300008131fe158073c021c057597562694b657940")
PIV_AID = bytes.fromhex("a000000308")
# SELECT answer: application property template with the PIX and the coexistent tag allocation.
SELECT_RESPONSE = bytes.fromhex("61114f0600001000010079074f05a000000308")
DISCOVERY = bytes.fromhex("7e124f0ba0000003080000100001005f2f024000")
PROTECTED_OBJECTS = {0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121}  # fingerprints, facial, printed, iris

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_SECURITY = 0x6982
SW_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_DATA_INVALID = 0x6984
SW_INCORRECT_DATA = 0x6A80
SW_FUNC_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_REF_NOT_FOUND = 0x6A88
SW_INCORRECT_P1P2 = 0x6B00
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00

OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")


class ApduError(Exception):
    def __init__(self, sw: int) -> None:
        super().__init__(f"SW {sw:04X}")
        self.sw = sw


@dataclass
class Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None  # None: absent; 256 / 65536 for a zero Le
    extended: bool


def parse_apdu(raw: bytes) -> Apdu:
    if len(raw) < 4:
        raise ApduError(SW_WRONG_LENGTH)
    cla, ins, p1, p2 = raw[:4]
    body = raw[4:]
    data, le, extended = b"", None, False
    if len(body) == 1:
        le = body[0] or 256
    elif len(body) >= 3 and body[0] == 0:
        extended = True
        if len(body) == 3:
            le = int.from_bytes(body[1:3], "big") or 65536
        else:
            lc = int.from_bytes(body[1:3], "big")
            data, rest = body[3 : 3 + lc], body[3 + lc :]
            if len(data) != lc or len(rest) not in (0, 2):
                raise ApduError(SW_WRONG_LENGTH)
            if rest:
                le = int.from_bytes(rest, "big") or 65536
    elif body:
        lc = body[0]
        data, rest = body[1 : 1 + lc], body[1 + lc :]
        if len(data) != lc or len(rest) > 1:
            raise ApduError(SW_WRONG_LENGTH)
        if rest:
            le = rest[0] or 256
    return Apdu(cla, ins, p1, p2, data, le, extended)


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _mgm_cipher(algorithm: int, key: bytes) -> Cipher[modes.ECB]:
    if algorithm == MGM_3DES:
        return Cipher(TripleDES(key), modes.ECB())
    return Cipher(algorithms.AES(key), modes.ECB())


def _ecb(algorithm: int, key: bytes, block: bytes, encrypt: bool) -> bytes:
    c = _mgm_cipher(algorithm, key)
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(block) + ctx.finalize()


def public_key_tlvs(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """The public key as GENERATE and GET METADATA return it: 81 n 82 e, or 86 point."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        n = nums.n.to_bytes((key.key_size + 7) // 8, "big")
        e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
        return tlv.tlv(0x81, n) + tlv.tlv(0x82, e)
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return tlv.tlv(0x86, point)


def _key_algorithm(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> int:
    if isinstance(key, rsa.RSAPrivateKey):
        return {1024: 0x06, 2048: 0x07}[key.key_size]
    return {"secp256r1": 0x11, "secp384r1": 0x14}[key.curve.name]


class PivApplet:
    """One YubiKey: its state lives in `folder` (see state.py) and is saved on every change."""

    def __init__(self, folder: Path, state: DeviceState) -> None:
        self.folder = folder
        self.state = state
        self.reset()

    # --- card life cycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Power on, warm reset: the security status is lost, PIV is the selected application."""
        self.pin_verified = False
        self.pin_fresh = False  # a VERIFY since the last private-key operation (PIN policy ALWAYS)
        self.mgm_authenticated = False
        self.mgm_witness: bytes | None = None
        self.mgm_challenge: bytes | None = None
        self.pending = b""  # response bytes not yet fetched by GET RESPONSE
        self.chain: tuple[int, int, int, bytes] | None = None  # (ins, p1, p2, data so far)

    def save(self) -> None:
        self.state.save(self.folder)

    # --- APDU dispatch -----------------------------------------------------------------------
    def process(self, raw: bytes) -> bytes:
        try:
            apdu = parse_apdu(raw)
            if apdu.ins == 0xC0 and not apdu.cla & 0x10:  # GET RESPONSE
                return self._respond(self.pending, apdu)
            self.pending = b""
            if apdu.cla & 0x10:  # command chaining: collect, answer 9000
                prev = self.chain
                if prev is not None and prev[:3] == (apdu.ins, apdu.p1, apdu.p2):
                    self.chain = (apdu.ins, apdu.p1, apdu.p2, prev[3] + apdu.data)
                else:
                    self.chain = (apdu.ins, apdu.p1, apdu.p2, apdu.data)
                return _sw(SW_OK)
            if self.chain is not None:
                if self.chain[:3] == (apdu.ins, apdu.p1, apdu.p2):
                    apdu.data = self.chain[3] + apdu.data
                self.chain = None
            if apdu.cla & ~0x10 & 0xFF not in (0x00,):
                raise ApduError(SW_CLA_NOT_SUPPORTED)
            handler = self.HANDLERS.get(apdu.ins)
            if handler is None:
                raise ApduError(SW_INS_NOT_SUPPORTED)
            return self._respond(handler(self, apdu), apdu)
        except ApduError as e:
            self.chain = None
            return _sw(e.sw)
        except (ValueError, IndexError, KeyError):
            self.chain = None
            return _sw(SW_INCORRECT_DATA)

    def _respond(self, data: bytes, apdu: Apdu) -> bytes:
        limit = apdu.le if apdu.le is not None else 256
        if apdu.extended and apdu.le is not None:
            limit = apdu.le
        part, self.pending = data[:limit], data[limit:]
        if self.pending:
            return part + bytes([0x61, min(len(self.pending), 256) & 0xFF])
        return part + _sw(SW_OK)

    # --- helpers -----------------------------------------------------------------------------
    def _require_mgm(self) -> None:
        if not self.mgm_authenticated:
            raise ApduError(SW_SECURITY)

    def _slot_key(self, slot: int) -> SlotKey:
        if slot not in KEY_SLOTS and slot != ATTESTATION_SLOT:
            raise ApduError(SW_INCORRECT_P1P2)
        key = self.state.key(slot)
        if key is None:
            raise ApduError(SW_REF_NOT_FOUND)
        return key

    @staticmethod
    def _object_id(data: bytes) -> int:
        ref = tlv.parse_dict(data).get(0x5C)
        if ref is None or not 1 <= len(ref) <= 3:
            raise ApduError(SW_INCORRECT_DATA)
        return int.from_bytes(ref, "big")

    # --- SELECT, GET VERSION, GET SERIAL --------------------------------------------------------
    def select(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x04:
            raise ApduError(SW_FILE_NOT_FOUND)
        if apdu.data[:5] == PIV_AID:
            return SELECT_RESPONSE
        raise ApduError(SW_FILE_NOT_FOUND)

    def get_version(self, apdu: Apdu) -> bytes:
        return bytes(self.state.firmware)

    def get_serial(self, apdu: Apdu) -> bytes:
        return self.state.serial.to_bytes(4, "big")

    # --- PIN and PUK ----------------------------------------------------------------------------
    def verify(self, apdu: Apdu) -> bytes:
        if apdu.p2 != 0x80:
            raise ApduError(SW_REF_NOT_FOUND)
        if apdu.p1 == 0xFF:  # reset the security status of the PIN
            if apdu.data:
                raise ApduError(SW_INCORRECT_DATA)
            self.pin_verified = self.pin_fresh = False
            return b""
        if apdu.p1 != 0x00:
            raise ApduError(SW_INCORRECT_P1P2)
        st = self.state
        if not apdu.data:  # status query
            if st.pin_retries == 0:
                raise ApduError(SW_BLOCKED)
            if self.pin_verified:
                return b""
            raise ApduError(0x63C0 | min(st.pin_retries, 15))
        if len(apdu.data) != 8:
            raise ApduError(SW_INCORRECT_DATA)
        if st.pin_retries == 0:
            raise ApduError(SW_BLOCKED)
        if not hmac.compare_digest(apdu.data, bytes.fromhex(st.pin)):
            st.pin_retries -= 1
            self.pin_verified = self.pin_fresh = False
            self.save()
            raise ApduError(0x63C0 | min(st.pin_retries, 15))
        if st.pin_retries != st.pin_retries_max:
            st.pin_retries = st.pin_retries_max
            self.save()
        self.pin_verified = self.pin_fresh = True
        return b""

    @staticmethod
    def _check_new_pin(value: bytes) -> None:
        pin = value.rstrip(b"\xff")
        if len(value) != 8 or not 6 <= len(pin) <= 8 or b"\xff" in pin:
            raise ApduError(SW_INCORRECT_DATA)

    def change_reference(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0 or apdu.p2 not in (0x80, 0x81) or len(apdu.data) != 16:
            raise ApduError(SW_INCORRECT_DATA)
        st = self.state
        which = "pin" if apdu.p2 == 0x80 else "puk"
        old, new = apdu.data[:8], apdu.data[8:]
        retries = getattr(st, f"{which}_retries")
        if retries == 0:
            raise ApduError(SW_BLOCKED)
        if not hmac.compare_digest(old, bytes.fromhex(getattr(st, which))):
            setattr(st, f"{which}_retries", retries - 1)
            if which == "pin":
                self.pin_verified = self.pin_fresh = False
            self.save()
            raise ApduError(0x63C0 | min(retries - 1, 15))
        self._check_new_pin(new)
        setattr(st, which, new.hex())
        setattr(st, f"{which}_retries", getattr(st, f"{which}_retries_max"))
        self.save()
        return b""

    def reset_retry_counter(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0 or apdu.p2 != 0x80 or len(apdu.data) != 16:
            raise ApduError(SW_INCORRECT_DATA)
        st = self.state
        puk, new_pin = apdu.data[:8], apdu.data[8:]
        if st.puk_retries == 0:
            raise ApduError(SW_BLOCKED)
        if not hmac.compare_digest(puk, bytes.fromhex(st.puk)):
            st.puk_retries -= 1
            self.save()
            raise ApduError(0x63C0 | min(st.puk_retries, 15))
        self._check_new_pin(new_pin)
        st.pin = new_pin.hex()
        st.pin_retries = st.pin_retries_max
        st.puk_retries = st.puk_retries_max
        self.save()
        return b""

    def set_pin_retries(self, apdu: Apdu) -> bytes:
        self._require_mgm()
        if not self.pin_verified:
            raise ApduError(SW_SECURITY)
        if not (1 <= apdu.p1 <= 255 and 1 <= apdu.p2 <= 255):
            raise ApduError(SW_INCORRECT_P1P2)
        st = self.state
        st.pin, st.puk = pad_pin(DEFAULT_PIN).hex(), pad_pin(DEFAULT_PUK).hex()
        st.pin_retries_max = st.pin_retries = apdu.p1
        st.puk_retries_max = st.puk_retries = apdu.p2
        self.save()
        return b""

    def factory_reset(self, apdu: Apdu) -> bytes:
        if self.state.pin_retries or self.state.puk_retries:
            raise ApduError(SW_CONDITIONS)
        self.state.factory_reset()
        self.save()
        self.reset()
        return b""

    # --- management key -------------------------------------------------------------------------
    def _mgm_authenticate(self, apdu: Apdu) -> bytes:
        st = self.state
        if apdu.p1 != st.mgm_algorithm:
            raise ApduError(SW_INCORRECT_P1P2)
        key = bytes.fromhex(st.mgm_key)
        block = 8 if st.mgm_algorithm == MGM_3DES else 16
        items = tlv.parse_dict(tlv.unwrap(0x7C, apdu.data))
        witness, challenge, response = items.get(0x80), items.get(0x81), items.get(0x82)
        if witness == b"" and challenge is None:  # step 1 of mutual auth: ask for a witness
            self.mgm_authenticated = False
            self.mgm_witness = os.urandom(block)
            self.mgm_challenge = None
            return tlv.tlv(0x7C, tlv.tlv(0x80, _ecb(st.mgm_algorithm, key, self.mgm_witness, True)))
        if witness and challenge is not None:  # step 2: decrypted witness + host challenge
            expected, self.mgm_witness = self.mgm_witness, None
            if expected is None or len(witness) != block or len(challenge) != block:
                raise ApduError(SW_INCORRECT_DATA)
            if not hmac.compare_digest(witness, expected):
                raise ApduError(SW_SECURITY)
            self.mgm_authenticated = True
            return tlv.tlv(0x7C, tlv.tlv(0x82, _ecb(st.mgm_algorithm, key, challenge, True)))
        if challenge == b"" and witness is None:  # external auth: the card's challenge
            self.mgm_authenticated = False
            self.mgm_challenge = os.urandom(block)
            self.mgm_witness = None
            return tlv.tlv(0x7C, tlv.tlv(0x81, self.mgm_challenge))
        if response and witness is None and challenge is None:  # external auth: the answer
            sent, self.mgm_challenge = self.mgm_challenge, None
            if sent is None:
                raise ApduError(SW_INCORRECT_DATA)
            if not hmac.compare_digest(response, _ecb(st.mgm_algorithm, key, sent, True)):
                raise ApduError(SW_SECURITY)
            self.mgm_authenticated = True
            return b""
        raise ApduError(SW_INCORRECT_DATA)

    def set_management_key(self, apdu: Apdu) -> bytes:
        self._require_mgm()
        if apdu.p1 != 0xFF or apdu.p2 not in (0xFE, 0xFF):
            raise ApduError(SW_INCORRECT_P1P2)
        data = apdu.data
        algorithm = data[0]
        if algorithm not in MGM_KEY_LENGTHS or data[1] != 0x9B:
            raise ApduError(SW_INCORRECT_DATA)
        key = data[3 : 3 + data[2]]
        if len(key) != MGM_KEY_LENGTHS[algorithm] or data[2] != len(key):
            raise ApduError(SW_INCORRECT_DATA)
        st = self.state
        st.mgm_algorithm, st.mgm_key = algorithm, key.hex()
        st.mgm_touch = 2 if apdu.p2 == 0xFE else TOUCH_NEVER
        self.save()
        return b""

    # --- private-key operations -----------------------------------------------------------------
    def general_authenticate(self, apdu: Apdu) -> bytes:
        if apdu.p2 == 0x9B:
            return self._mgm_authenticate(apdu)
        slot_key = self._slot_key(apdu.p2)
        if apdu.p2 == ATTESTATION_SLOT:
            raise ApduError(SW_SECURITY)
        if apdu.p1 != slot_key.algorithm:
            raise ApduError(SW_INCORRECT_P1P2)
        items = tlv.parse_dict(tlv.unwrap(0x7C, apdu.data))
        if items.get(0x82) != b"":
            raise ApduError(SW_INCORRECT_DATA)
        if slot_key.pin_policy == PIN_ALWAYS and not self.pin_fresh:
            raise ApduError(SW_SECURITY)
        if slot_key.pin_policy != PIN_NEVER and not self.pin_verified:
            raise ApduError(SW_SECURITY)
        key = slot_key.private_key()
        if 0x81 in items:
            result = self._sign_or_decrypt(key, items[0x81])
        elif 0x85 in items and isinstance(key, ec.EllipticCurvePrivateKey):
            peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, items[0x85])
            result = key.exchange(ec.ECDH(), peer)
        else:
            raise ApduError(SW_INCORRECT_DATA)
        self.pin_fresh = False
        return tlv.tlv(0x7C, tlv.tlv(0x82, result))

    @staticmethod
    def _sign_or_decrypt(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):  # raw RSA: the host did (or will undo) padding
            size = (key.key_size + 7) // 8
            nums = key.private_numbers()
            c = int.from_bytes(data, "big")
            if len(data) != size or c >= nums.public_numbers.n:
                raise ApduError(SW_INCORRECT_DATA)
            m1 = pow(c, nums.dmp1, nums.p)
            m2 = pow(c, nums.dmq1, nums.q)
            m = m2 + (nums.iqmp * (m1 - m2) % nums.p) * nums.q
            return m.to_bytes(size, "big")
        size = (key.curve.key_size + 7) // 8
        if len(data) > size:  # ECDSA uses the leftmost bits of the digest
            data = data[:size]
        digest = data.rjust(size, b"\0")
        hash_alg = hashes.SHA256() if size == 32 else hashes.SHA384()
        return key.sign(digest, ec.ECDSA(Prehashed(hash_alg)))

    def generate(self, apdu: Apdu) -> bytes:
        self._require_mgm()
        slot = apdu.p2
        if apdu.p1 != 0 or slot not in KEY_SLOTS:
            raise ApduError(SW_INCORRECT_P1P2)
        params = tlv.parse_dict(tlv.unwrap(0xAC, apdu.data))
        algorithm = params.get(0x80, b"\0")[0]
        pin_policy = params.get(0xAA, b"\0")[0] or default_pin_policy(slot)
        touch_policy = params.get(0xAB, b"\0")[0] or TOUCH_NEVER
        if pin_policy not in (1, 2, 3) or touch_policy not in (1, 2, 3):
            raise ApduError(SW_INCORRECT_DATA)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm in EC_CURVES:
            key = ec.generate_private_key(EC_CURVES[algorithm])
        elif algorithm in RSA_BITS:
            key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS[algorithm])
        else:
            raise ApduError(SW_INCORRECT_DATA)
        self._store_key(slot, key, algorithm, pin_policy, touch_policy, ORIGIN_GENERATED)
        return tlv.tlv(0x7F49, public_key_tlvs(key.public_key()))

    def import_key(self, apdu: Apdu) -> bytes:
        self._require_mgm()
        slot, algorithm = apdu.p2, apdu.p1
        if slot not in KEY_SLOTS and slot != ATTESTATION_SLOT:
            raise ApduError(SW_INCORRECT_P1P2)
        items = tlv.parse_dict(apdu.data)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm in EC_CURVES:
            key = ec.derive_private_key(int.from_bytes(items[0x06], "big"), EC_CURVES[algorithm])
        elif algorithm in RSA_BITS:
            p, q = (int.from_bytes(items[t], "big") for t in (0x01, 0x02))
            e = 65537
            d = pow(e, -1, (p - 1) * (q - 1))
            nums = rsa.RSAPrivateNumbers(
                p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
            )
            key = nums.private_key()
            if key.key_size != RSA_BITS[algorithm]:
                raise ApduError(SW_INCORRECT_DATA)
        else:
            raise ApduError(SW_INCORRECT_DATA)
        pin_policy = items.get(0xAA, b"\0")[0] or default_pin_policy(slot)
        touch_policy = items.get(0xAB, b"\0")[0] or TOUCH_NEVER
        self._store_key(slot, key, algorithm, pin_policy, touch_policy, ORIGIN_IMPORTED)
        return b""

    def _store_key(
        self,
        slot: int,
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        algorithm: int,
        pin_policy: int,
        touch_policy: int,
        origin: int,
    ) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.state.set_key(slot, SlotKey(algorithm, pin_policy, touch_policy, origin, pem))
        self.save()

    # --- metadata and attestation ---------------------------------------------------------------
    def get_metadata(self, apdu: Apdu) -> bytes:
        st = self.state
        if apdu.p1 != 0:
            raise ApduError(SW_INCORRECT_P1P2)
        if apdu.p2 in (0x80, 0x81):
            which = "pin" if apdu.p2 == 0x80 else "puk"
            default = pad_pin(DEFAULT_PIN if which == "pin" else DEFAULT_PUK)
            is_default = bytes.fromhex(getattr(st, which)) == default
            retries = bytes([getattr(st, f"{which}_retries_max"), getattr(st, f"{which}_retries")])
            return (
                tlv.tlv(0x01, b"\xff")
                + tlv.tlv(0x05, b"\x01" if is_default else b"\x00")
                + tlv.tlv(0x06, retries)
            )
        if apdu.p2 == 0x9B:
            is_default = bytes.fromhex(st.mgm_key) == DEFAULT_MANAGEMENT_KEY
            return (
                tlv.tlv(0x01, bytes([st.mgm_algorithm]))
                + tlv.tlv(0x02, bytes([0xFF, st.mgm_touch]))
                + tlv.tlv(0x05, b"\x01" if is_default else b"\x00")
            )
        slot_key = self._slot_key(apdu.p2)
        public = slot_key.private_key().public_key()
        return (
            tlv.tlv(0x01, bytes([slot_key.algorithm]))
            + tlv.tlv(0x02, bytes([slot_key.pin_policy, slot_key.touch_policy]))
            + tlv.tlv(0x03, bytes([slot_key.origin]))
            + tlv.tlv(0x04, public_key_tlvs(public))
        )

    def attest(self, apdu: Apdu) -> bytes:
        slot = apdu.p1
        if slot == ATTESTATION_SLOT:
            raise ApduError(SW_INCORRECT_DATA)
        slot_key = self._slot_key(slot)
        if slot_key.origin != ORIGIN_GENERATED:
            raise ApduError(SW_INCORRECT_DATA)
        return self.attestation_certificate(slot, slot_key)

    def attestation_certificate(self, slot: int, slot_key: SlotKey) -> bytes:
        st = self.state
        f9 = st.key(ATTESTATION_SLOT)
        f9_obj = st.get_object(OBJECT_OF_SLOT[ATTESTATION_SLOT])
        if f9 is None or f9_obj is None:
            raise ApduError(SW_CONDITIONS)
        f9_cert = x509.load_der_x509_certificate(tlv.parse_dict(f9_obj)[0x70])
        f9_key = f9.private_key()
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"YubiKey PIV Attestation {slot:02x}")]
        )
        serial_der = tlv.tlv(0x02, st.serial.to_bytes((st.serial.bit_length() + 8) // 8, "big"))
        extensions = [
            (OID_FIRMWARE, bytes(st.firmware)),
            (OID_SERIAL, serial_der),
            (OID_POLICY, bytes([slot_key.pin_policy, slot_key.touch_policy])),
            (OID_FORM_FACTOR, bytes([st.form_factor])),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(f9_cert.subject)
            .public_key(slot_key.private_key().public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(f9_cert.not_valid_before_utc)
            .not_valid_after(
                min(
                    f9_cert.not_valid_after_utc,
                    datetime.datetime(2052, 4, 17, tzinfo=datetime.UTC),
                )
            )
        )
        for oid, value in extensions:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        if not isinstance(f9_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ApduError(SW_CONDITIONS)
        cert = builder.sign(f9_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.DER)

    # --- data objects ---------------------------------------------------------------------------
    def get_data(self, apdu: Apdu) -> bytes:
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise ApduError(SW_INCORRECT_P1P2)
        object_id = self._object_id(apdu.data)
        if object_id == 0x7E:
            return DISCOVERY
        if object_id in PROTECTED_OBJECTS and not self.pin_verified:
            raise ApduError(SW_SECURITY)
        value = self.state.get_object(object_id)
        if value is None:
            raise ApduError(SW_FILE_NOT_FOUND)
        return tlv.tlv(0x53, value)

    def put_data(self, apdu: Apdu) -> bytes:
        self._require_mgm()
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise ApduError(SW_INCORRECT_P1P2)
        items = tlv.parse(apdu.data)
        if len(items) != 2 or items[0][0] != 0x5C or items[1][0] != 0x53:
            raise ApduError(SW_INCORRECT_DATA)
        object_id = int.from_bytes(items[0][1], "big")
        if object_id == 0x7E or not 0x5FC101 <= object_id <= 0x5FFFFF:
            raise ApduError(SW_INCORRECT_DATA)
        if len(items[1][1]) > 3052:
            raise ApduError(SW_INCORRECT_DATA)
        self.state.put_object(object_id, items[1][1])
        self.save()
        return b""

    HANDLERS: ClassVar[dict[int, Callable[[PivApplet, Apdu], bytes]]] = {
        0xA4: select,
        0xFD: get_version,
        0xF8: get_serial,
        0xF7: get_metadata,
        0x20: verify,
        0x24: change_reference,
        0x2C: reset_retry_counter,
        0xFA: set_pin_retries,
        0xFB: factory_reset,
        0xFF: set_management_key,
        0x87: general_authenticate,
        0x47: generate,
        0xFE: import_key,
        0xF9: attest,
        0xCB: get_data,
        0xDB: put_data,
    }
