"""The virtual YubiKey's persistent state: one folder, one JSON file plus the test root CA.

Layout of the folder:
  state.json     serial, firmware, PIN/PUK (padded, hex) and counters, management key, the
                 private keys of the PIV slots (PEM; this is a test device), data objects (hex)
  root-ca.pem    the test root that issued the slot-f9 attestation certificate (trust it
                 only in tests); root-ca.key is its private key, kept for re-issuing
Every change is written at once (write to a temporary file, then rename), so a killed emulator
loses nothing and a restarted one is the same device.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from . import tlv

DEFAULT_PIN = b"123456"
DEFAULT_PUK = b"12345678"
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
FIRMWARE = (5, 4, 3)
FORM_FACTOR_USB_A_KEYCHAIN = 0x01

# management key algorithms (P1 of GENERAL AUTHENTICATE for slot 9b) and their key lengths
MGM_3DES, MGM_AES128, MGM_AES192, MGM_AES256 = 0x03, 0x08, 0x0A, 0x0C
MGM_KEY_LENGTHS = {MGM_3DES: 24, MGM_AES128: 16, MGM_AES192: 24, MGM_AES256: 32}

# key algorithms
RSA1024, RSA2048, ECCP256, ECCP384 = 0x06, 0x07, 0x11, 0x14
EC_CURVES: dict[int, ec.EllipticCurve] = {ECCP256: ec.SECP256R1(), ECCP384: ec.SECP384R1()}
RSA_BITS = {RSA1024: 1024, RSA2048: 2048}

# PIN policy: 1 never, 2 once, 3 always; touch policy: 1 never, 2 always, 3 cached
PIN_NEVER, PIN_ONCE, PIN_ALWAYS = 1, 2, 3
TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED = 1, 2, 3
ORIGIN_GENERATED, ORIGIN_IMPORTED = 1, 2

ATTESTATION_SLOT = 0xF9
KEY_SLOTS = (0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96))
OBJECT_OF_SLOT = {
    0x9A: 0x5FC105,
    0x9C: 0x5FC10A,
    0x9D: 0x5FC10B,
    0x9E: 0x5FC101,
    **{slot: 0x5FC10D + i for i, slot in enumerate(range(0x82, 0x96))},
    ATTESTATION_SLOT: 0x5FFF01,
}


def default_pin_policy(slot: int) -> int:
    return {0x9C: PIN_ALWAYS, 0x9E: PIN_NEVER, ATTESTATION_SLOT: PIN_NEVER}.get(slot, PIN_ONCE)


def pad_pin(pin: bytes) -> bytes:
    return pin.ljust(8, b"\xff")


def certificate_object(cert_der: bytes) -> bytes:
    """A certificate data object as YubiKeys store it: 70 cert, 71 certinfo (0), FE LRC."""
    return tlv.tlv(0x70, cert_der) + tlv.tlv(0x71, b"\x00") + tlv.tlv(0xFE)


@dataclass
class SlotKey:
    algorithm: int
    pin_policy: int
    touch_policy: int
    origin: int
    private_pem: str

    def private_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TypeError("unsupported key in state")
        return key


@dataclass
class DeviceState:
    serial: int
    firmware: tuple[int, int, int] = FIRMWARE
    form_factor: int = FORM_FACTOR_USB_A_KEYCHAIN
    pin: str = pad_pin(DEFAULT_PIN).hex()
    puk: str = pad_pin(DEFAULT_PUK).hex()
    pin_retries_max: int = 3
    pin_retries: int = 3
    puk_retries_max: int = 3
    puk_retries: int = 3
    mgm_algorithm: int = MGM_3DES
    mgm_key: str = DEFAULT_MANAGEMENT_KEY.hex()
    mgm_touch: int = TOUCH_NEVER
    keys: dict[str, SlotKey] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)

    # --- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: Path) -> DeviceState:
        raw = json.loads((folder / "state.json").read_text())
        raw["firmware"] = tuple(raw["firmware"])
        raw["keys"] = {k: SlotKey(**v) for k, v in raw["keys"].items()}
        return cls(**raw)

    def save(self, folder: Path) -> None:
        path = folder / "state.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, path)

    # --- accessors ---------------------------------------------------------------------------
    def key(self, slot: int) -> SlotKey | None:
        return self.keys.get(f"{slot:02x}")

    def set_key(self, slot: int, key: SlotKey | None) -> None:
        if key is None:
            self.keys.pop(f"{slot:02x}", None)
        else:
            self.keys[f"{slot:02x}"] = key

    def get_object(self, object_id: int) -> bytes | None:
        value = self.objects.get(f"{object_id:x}")
        return None if value is None else bytes.fromhex(value)

    def put_object(self, object_id: int, value: bytes) -> None:
        if value:
            self.objects[f"{object_id:x}"] = value.hex()
        else:
            self.objects.pop(f"{object_id:x}", None)

    def factory_reset(self) -> None:
        """INS FB: PIN, PUK and management key back to defaults, user keys and objects gone.
        The slot-f9 attestation key and certificate survive, as on a real device."""
        f9_key = self.key(ATTESTATION_SLOT)
        f9_cert = self.get_object(OBJECT_OF_SLOT[ATTESTATION_SLOT])
        fresh = DeviceState(
            serial=self.serial, firmware=self.firmware, form_factor=self.form_factor
        )
        self.__dict__.update(fresh.__dict__)
        self.set_key(ATTESTATION_SLOT, f9_key)
        if f9_cert:
            self.put_object(OBJECT_OF_SLOT[ATTESTATION_SLOT], f9_cert)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create(folder: Path, serial: int | None = None, mgm_algorithm: int = MGM_3DES) -> DeviceState:
    """A new device in `folder`: a test root CA, the slot-f9 key and its certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root_name = _name("Virtual YubiKey PIV Test Root CA (tests only)")
    ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(ski, critical=False)
        .sign(root_key, hashes.SHA256())
    )
    f9_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    f9_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Yubico PIV Attestation"))
        .issuer_name(root_name)
        .public_key(f9_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(f9_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3"), bytes(FIRMWARE)
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.PrivateFormat.PKCS8
    nokey = serialization.NoEncryption()
    (folder / "root-ca.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    fd = os.open(folder / "root-ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(root_key.private_bytes(serialization.Encoding.PEM, pem, nokey))
    if serial is None:
        serial = 10_000_000 + secrets.randbelow(89_999_999)
    state = DeviceState(serial=serial, mgm_algorithm=mgm_algorithm)
    state.set_key(
        ATTESTATION_SLOT,
        SlotKey(
            algorithm=RSA2048,
            pin_policy=PIN_NEVER,
            touch_policy=TOUCH_NEVER,
            origin=ORIGIN_IMPORTED,
            private_pem=f9_key.private_bytes(serialization.Encoding.PEM, pem, nokey).decode(),
        ),
    )
    state.put_object(
        OBJECT_OF_SLOT[ATTESTATION_SLOT],
        certificate_object(f9_cert.public_bytes(serialization.Encoding.DER)),
    )
    state.save(folder)
    return state


def load_or_create(folder: Path, **kwargs: object) -> DeviceState:
    if (folder / "state.json").exists():
        return DeviceState.load(folder)
    return create(folder, **kwargs)  # type: ignore[arg-type]
