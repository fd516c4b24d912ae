"""The signed server policy: how many officers approve a card, and who the officers are.

Pure code: no I/O. The byte format and the rules (P1-P8) are in docs/trust.md; every rule has
a vector in tests/vectors/policy/. A policy is a canonical JSON body (its id is the body's
SHA-256) with signatures over a domain-separated message, exported as one line
`hsmv-policy-1:<base64url>`. Policies form a chain: serial n+1 names policy n as `previous`.

`accept_policy(held, new, app_spki)` decides whether a client that holds `held` may move to
`new`: the next serial of the same server, signed by the application key and, once the held
policy names as many officers as it requires approvals, by that many of the held policy's
officers. Until then (the bootstrap ceremony) the application key alone signs.

Two format versions are read. Version 2 adds `require_attestation` (cards of the server must
carry a verified key attestation) and defines two optional rules, absent unless set: `recovery`
(a recovery card, or k-of-n officer shares) and `max_head_age` (seconds a transparency-log
head may be old). A writer uses the lowest version that can say what a policy says, and a
chain never goes back to an older version (P8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hsm_vault.algorithms import KeyType, SignatureAlgorithm, verify_signature
from hsm_vault.cards.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    hex_digest_field,
    parse_canonical_json,
)
from hsm_vault.cards.model import (
    CardSignature,
    _enum,
    _exact_keys,
    _key_type_of,
    _load_public_key,
    _text_field,
    check_time,
    is_version,
    key_id_of,
)
from hsm_vault.errors import (
    CardFormatError,
    InvalidSignature,
    KeyFormatError,
    PolicyFormatError,
    PolicyVerificationError,
)
from hsm_vault.trust.cards import APP, OFFICER_PREFIX, OfficerKey, TrustPolicy, officer_signer

POLICY_VERSION = 2
"""The newest policy format version; `POLICY_VERSIONS` are read."""
POLICY_VERSIONS = (1, 2)
POLICY_TEXT_PREFIX = "hsmv-policy-"
POLICY_DOMAIN = b"hsmv-policy-sig-v1\n"
MAX_TEXT_LENGTH = 262144
MAX_APPROVALS = 16
MAX_OFFICERS = 64
MAX_HEAD_AGE = 2**31 - 1


def _format(check: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a card field check, reporting its failure as a policy format error."""
    try:
        return check(*args, **kwargs)
    except PolicyFormatError:
        raise
    except CardFormatError as exc:
        raise PolicyFormatError(exc.message) from None


@dataclass(frozen=True)
class PolicyOfficer:
    """An officer named in a policy: account name, card identity, card id and card key."""

    username: str
    identity: str
    card_id: str
    key_type: KeyType
    spki_der: bytes

    def __post_init__(self) -> None:
        _format(officer_signer, self.username)
        _format(_text_field, self.identity, "officer identity")
        _format(hex_digest_field, self.card_id, "officer card id")
        key_type = _format(_enum, KeyType, self.key_type, "key algorithm")
        object.__setattr__(self, "key_type", key_type)
        if not isinstance(self.spki_der, bytes):
            raise PolicyFormatError("an officer key must be DER bytes")
        public_key = _format(_load_public_key, self.spki_der)
        if _format(_key_type_of, public_key) != key_type:
            raise PolicyFormatError(f"officer {self.username!r}: the key is not {key_type}")

    @property
    def signer(self) -> str:
        return officer_signer(self.username)

    @property
    def key(self) -> OfficerKey:
        return OfficerKey(self.username, self.identity, self.card_id, self.spki_der)

    def to_json(self) -> dict[str, Any]:
        return {
            "card_id": self.card_id,
            "identity": self.identity,
            "key": {"algorithm": self.key_type.value, "spki": b64url_encode(self.spki_der)},
            "username": self.username,
        }

    @classmethod
    def from_json(cls, obj: Any) -> PolicyOfficer:
        obj = _format(_exact_keys, obj, ("card_id", "identity", "key", "username"), "officer")
        key = _format(_exact_keys, obj["key"], ("algorithm", "spki"), "officer key")
        return cls(
            username=obj["username"],
            identity=obj["identity"],
            card_id=obj["card_id"],
            key_type=key["algorithm"],
            spki_der=_format(b64url_decode, key["spki"], "officer key"),
        )


@dataclass(frozen=True)
class RecoveryCard:
    """Recovery by one card: files are also wrapped to the card `card_id` (kept offline)."""

    card_id: str

    def __post_init__(self) -> None:
        _format(hex_digest_field, self.card_id, "recovery card id")

    def check_against(self, officers: tuple[PolicyOfficer, ...]) -> None:
        """Nothing to check: the recovery card need not be an officer's."""

    def to_json(self) -> dict[str, Any]:
        return {"card_id": self.card_id, "method": "card"}


@dataclass(frozen=True)
class RecoveryShares:
    """Recovery by officer shares: a recovery key split so that any `threshold` of `officers`
    (user names of officers of the same policy) can rebuild it."""

    threshold: int
    officers: tuple[str, ...]

    def __post_init__(self) -> None:
        officers = tuple(self.officers)
        for name in officers:
            _format(officer_signer, name)
        encoded = [name.encode() for name in officers]
        if not officers or encoded != sorted(set(encoded)):
            raise PolicyFormatError(
                "the recovery officers must be a non-empty list sorted by name, without repeats"
            )
        if type(self.threshold) is not int or not 1 <= self.threshold <= len(officers):
            raise PolicyFormatError(
                f"the recovery threshold must be a whole number from 1 to {len(officers)}"
            )
        object.__setattr__(self, "officers", officers)

    def check_against(self, officers: tuple[PolicyOfficer, ...]) -> None:
        names = {o.username for o in officers}
        unknown = [name for name in self.officers if name not in names]
        if unknown:
            raise PolicyFormatError(
                f"recovery share holder {unknown[0]!r} is not an officer of the policy"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "officer-shares",
            "officers": list(self.officers),
            "threshold": self.threshold,
        }


Recovery = RecoveryCard | RecoveryShares


def recovery_from_json(obj: Any) -> Recovery:
    """The `recovery` rule of a version 2 policy."""
    method = obj.get("method") if isinstance(obj, dict) else None
    if method == "card":
        obj = _format(_exact_keys, obj, ("card_id", "method"), "recovery rule")
        return RecoveryCard(obj["card_id"])
    if method == "officer-shares":
        obj = _format(_exact_keys, obj, ("method", "officers", "threshold"), "recovery rule")
        if not isinstance(obj["officers"], list):
            raise PolicyFormatError("the recovery officers must be a list")
        return RecoveryShares(obj["threshold"], tuple(obj["officers"]))
    raise PolicyFormatError(f"unknown recovery method {method!r} (card, officer-shares)")


def version_needed(
    require_attestation: bool, recovery: Recovery | None, max_head_age: int | None
) -> int:
    """The lowest policy format version that can state these rules."""
    return 2 if require_attestation or recovery is not None or max_head_age is not None else 1


@dataclass(frozen=True)
class PolicyBody:
    """What a policy says (the signed content). Invalid bodies cannot be constructed."""

    serial: int
    app_key_id: str
    approvals: int
    officers: tuple[PolicyOfficer, ...]
    created_at: str
    previous: str | None
    version: int = 1
    #: Version 2: cards of this server must carry a key attestation that verifies (V11).
    require_attestation: bool = False
    #: Version 2, optional: how files can be recovered without their recipients' tokens
    #: (carried and checked here; enforced by the recovery feature).
    recovery: Recovery | None = None
    #: Version 2, optional: the oldest transparency-log head (seconds) a client accepts
    #: (carried and checked here; enforced by the log client).
    max_head_age: int | None = None

    def __post_init__(self) -> None:
        if not any(is_version(self.version, v) for v in POLICY_VERSIONS):
            raise PolicyFormatError(f"unknown policy version {self.version!r}")
        if not isinstance(self.require_attestation, bool):
            raise PolicyFormatError("require_attestation must be true or false")
        recovery_types = (RecoveryCard, RecoveryShares)
        if self.recovery is not None and not isinstance(self.recovery, recovery_types):
            raise PolicyFormatError("the recovery rule must be a RecoveryCard or RecoveryShares")
        if self.max_head_age is not None and (
            type(self.max_head_age) is not int or not 1 <= self.max_head_age <= MAX_HEAD_AGE
        ):
            raise PolicyFormatError(
                f"max_head_age must be a whole number of seconds from 1 to {MAX_HEAD_AGE}"
            )
        needed = version_needed(self.require_attestation, self.recovery, self.max_head_age)
        if self.version < needed:
            raise PolicyFormatError(
                f"a version {self.version} policy cannot state require_attestation, recovery "
                "or max_head_age"
            )
        if type(self.serial) is not int or not 1 <= self.serial < 2**53:
            raise PolicyFormatError("the policy serial must be a whole number from 1")
        _format(hex_digest_field, self.app_key_id, "application key id")
        if type(self.approvals) is not int or not 0 <= self.approvals <= MAX_APPROVALS:
            raise PolicyFormatError(f"approvals must be a whole number from 0 to {MAX_APPROVALS}")
        officers = tuple(self.officers)
        if len(officers) > MAX_OFFICERS:
            raise PolicyFormatError(f"a policy names at most {MAX_OFFICERS} officers")
        if not all(isinstance(o, PolicyOfficer) for o in officers):
            raise PolicyFormatError("the officers must be PolicyOfficer entries")
        names = [o.username.encode() for o in officers]
        if names != sorted(set(names)):
            raise PolicyFormatError("the officers must be sorted by user name, without repeats")
        for attribute, what in (("card_id", "card"), ("identity", "identity")):
            values = [getattr(o, attribute) for o in officers]
            if len(set(values)) != len(values):
                raise PolicyFormatError(f"two officers share one {what}")
        object.__setattr__(self, "officers", officers)
        _format(check_time, self.created_at)
        if self.previous is not None:
            _format(hex_digest_field, self.previous, "previous policy id")
        if (self.serial == 1) != (self.previous is None):
            raise PolicyFormatError("policy 1 and only policy 1 names no previous policy")
        if self.recovery is not None:
            self.recovery.check_against(officers)

    @property
    def id(self) -> str:
        """Hex SHA-256 of the canonical body bytes."""
        import hashlib

        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def complete(self) -> bool:
        """True once the policy names at least as many officers as approvals it requires."""
        return len(self.officers) >= self.approvals

    def officer(self, username: str) -> PolicyOfficer | None:
        return next((o for o in self.officers if o.username == username), None)

    def signing_message(self, signer: str) -> bytes:
        """The domain-separated message `signer` signs: domain, signer name, raw policy id."""
        return POLICY_DOMAIN + signer.encode("ascii") + b"\n" + bytes.fromhex(self.id)

    def successor(
        self,
        *,
        created_at: str,
        approvals: int | None = None,
        add: tuple[PolicyOfficer, ...] = (),
        remove: tuple[str, ...] = (),
        require_attestation: bool | None = None,
        recovery: Recovery | None = None,
    ) -> PolicyBody:
        """The next policy: serial + 1, this one as previous, officers, approvals, the
        attestation rule and (when given) the recovery rule changed, the other rules carried;
        never an older format version."""
        unknown = [u for u in remove if self.officer(u) is None]
        if unknown:
            raise PolicyFormatError(f"{unknown[0]!r} is not an officer of policy {self.serial}")
        kept = [o for o in self.officers if o.username not in remove]
        officers = sorted([*kept, *add], key=lambda o: o.username.encode())
        attest = self.require_attestation if require_attestation is None else require_attestation
        rule = self.recovery if recovery is None else recovery
        return replace(
            self,
            serial=self.serial + 1,
            approvals=self.approvals if approvals is None else approvals,
            officers=tuple(officers),
            created_at=created_at,
            previous=self.id,
            require_attestation=attest,
            recovery=rule,
            version=max(self.version, version_needed(attest, rule, self.max_head_age)),
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "app_key": self.app_key_id,
            "approvals": self.approvals,
            "created_at": self.created_at,
            "officers": [o.to_json() for o in self.officers],
            "previous": self.previous,
            "serial": self.serial,
            "type": "hsmv-policy",
            "version": self.version,
        }
        if self.version >= 2:
            body["require_attestation"] = self.require_attestation
            if self.recovery is not None:  # optional rules: absent unless set
                body["recovery"] = self.recovery.to_json()
            if self.max_head_age is not None:
                body["max_head_age"] = self.max_head_age
        return body

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> PolicyBody:
        if not isinstance(obj, dict):
            raise PolicyFormatError("the policy must be a JSON object")
        version = obj.get("version")
        if not any(is_version(version, v) for v in POLICY_VERSIONS):
            raise PolicyFormatError(f"unknown policy version {version!r}")
        fields = [
            "app_key",
            "approvals",
            "created_at",
            "officers",
            "previous",
            "serial",
            "type",
            "version",
        ]
        optional: dict[str, Any] = {}
        if version == 2:
            fields.append("require_attestation")
            obj = dict(obj)
            for name in ("recovery", "max_head_age"):  # absent unless set; null is not absent
                if name in obj:
                    optional[name] = obj.pop(name)
                    if optional[name] is None:
                        raise PolicyFormatError(f"{name} is null: leave it out when not set")
        obj = _format(_exact_keys, obj, fields, "policy")
        if obj["type"] != "hsmv-policy":
            raise PolicyFormatError("the policy type is not hsmv-policy")
        if not isinstance(obj["officers"], list):
            raise PolicyFormatError("the officers must be a list")
        return cls(
            serial=obj["serial"],
            app_key_id=obj["app_key"],
            approvals=obj["approvals"],
            officers=tuple(PolicyOfficer.from_json(o) for o in obj["officers"]),
            created_at=obj["created_at"],
            previous=obj["previous"],
            version=obj["version"],
            require_attestation=obj.get("require_attestation", False),
            recovery=recovery_from_json(optional["recovery"]) if "recovery" in optional else None,
            max_head_age=optional.get("max_head_age"),
        )


def _check_policy_signer(signer: str) -> None:
    if signer != APP and not signer.startswith(OFFICER_PREFIX):
        raise PolicyFormatError(f"a policy is signed by 'app' or officers, not {signer!r}")
    if signer != APP:
        _format(officer_signer, signer[len(OFFICER_PREFIX) :])


@dataclass(frozen=True)
class SignedPolicy:
    """A policy body and its signatures (sorted by signer, one per signer)."""

    body: PolicyBody
    signatures: tuple[CardSignature, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.body, PolicyBody):
            raise PolicyFormatError("a signed policy needs a PolicyBody")
        signatures = tuple(self.signatures)
        names = [s.signer for s in signatures]
        if len(set(names)) != len(names):
            raise PolicyFormatError("a policy holds at most one signature per signer")
        for name in names:
            _check_policy_signer(name)
        object.__setattr__(
            self, "signatures", tuple(sorted(signatures, key=lambda s: s.signer.encode()))
        )

    @property
    def id(self) -> str:
        return self.body.id

    @property
    def serial(self) -> int:
        return self.body.serial

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(s.signer for s in self.signatures)

    def signature_by(self, signer: str) -> CardSignature | None:
        return next((s for s in self.signatures if s.signer == signer), None)

    def with_signature(self, signature: CardSignature) -> SignedPolicy:
        kept = tuple(s for s in self.signatures if s.signer != signature.signer)
        return replace(self, signatures=(*kept, signature))

    @property
    def version(self) -> int:
        """The format version: of the body, the envelope and the text prefix alike."""
        return self.body.version

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "policy": self.body.to_json(),
            "signatures": [s.to_json() for s in self.signatures],
            "version": self.version,
        }

    def to_text(self) -> str:
        """One line: `hsmv-policy-<version>:` and base64url of the canonical JSON."""
        body = b64url_encode(canonical_json(self.to_json()))
        return f"{POLICY_TEXT_PREFIX}{self.version}:{body}"

    @classmethod
    def from_text(cls, text: str) -> SignedPolicy:
        """Parse the one-line form: PolicyFormatError (P1, P2), or PolicyVerificationError if
        the stated id is not the body's (P3). Signatures are not checked here."""
        if not isinstance(text, str):
            raise PolicyFormatError("a policy must be text")
        text = text.strip(" \t\r\n")
        if len(text) > MAX_TEXT_LENGTH:
            raise PolicyFormatError("the policy text is too long")
        head, colon, body = text.partition(":")
        if not colon or not head.startswith(POLICY_TEXT_PREFIX):
            raise PolicyFormatError("this is not an hsm-vault policy (hsmv-policy-...)")
        version_text = head[len(POLICY_TEXT_PREFIX) :]
        version = next((v for v in POLICY_VERSIONS if version_text == str(v)), None)
        if version is None:
            raise PolicyFormatError(f"unknown policy version {version_text!r}")
        raw = _format(b64url_decode, body, "policy text")
        obj = _format(parse_canonical_json, raw, "policy")
        if isinstance(obj, dict) and not is_version(obj.get("version"), version):
            raise PolicyFormatError(
                f"the policy envelope version {obj.get('version')!r} is not the text's {version}"
            )
        obj = _format(_exact_keys, obj, ("id", "policy", "signatures", "version"), "policy")
        stated = _format(hex_digest_field, obj["id"], "policy id")
        policy_body = PolicyBody.from_json(obj["policy"])
        if policy_body.version != version:
            raise PolicyFormatError(
                f"the policy body is version {policy_body.version}, its envelope {version}"
            )
        if not isinstance(obj["signatures"], list):
            raise PolicyFormatError("the signatures must be a list")
        signatures = tuple(_format(CardSignature.from_json, s) for s in obj["signatures"])
        names = [s.signer.encode() for s in signatures]
        if names != sorted(names):
            raise PolicyFormatError("the signatures are not sorted by signer")
        policy = cls(policy_body, signatures)
        if policy.id != stated:
            raise PolicyVerificationError("the policy id does not match its content")
        return policy

    def card_trust(
        self, app_spki: bytes, attestation_roots: tuple[Any, ...] | None = None
    ) -> TrustPolicy:
        """The trust policy for cards under this policy: self, app, officer approvals, and
        key attestation (to `attestation_roots`; None: Yubico's) when the policy requires it."""
        return TrustPolicy(
            required=frozenset({APP}),
            trusted={APP: (app_spki,)},
            approvals=self.body.approvals,
            officers=tuple(o.key for o in self.body.officers),
            require_attestation=self.body.require_attestation,
            attestation_roots=attestation_roots,
        )


def sign_policy(
    policy: SignedPolicy,
    signer: str,
    spki_der: bytes,
    algorithm: SignatureAlgorithm,
    sign: Callable[[bytes], bytes],
) -> SignedPolicy:
    """Add `signer`'s signature made by `sign` (a token, or a test key); checked before kept."""
    message = policy.body.signing_message(signer)
    signature = CardSignature(signer, key_id_of(spki_der), algorithm, sign(message))
    signed = policy.with_signature(signature)
    _verify_signature(signed, signature, spki_der, repr(signer))
    return signed


def _verify_signature(policy: SignedPolicy, sig: CardSignature, spki: bytes, who: str) -> None:
    if sig.key_id != key_id_of(spki):
        raise PolicyVerificationError(f"the {who} signature on the policy names another key")
    try:
        verify_signature(
            spki,
            SignatureAlgorithm(sig.algorithm),
            policy.body.signing_message(sig.signer),
            sig.signature,
        )
    except InvalidSignature:
        raise PolicyVerificationError(
            f"the {who} signature on the policy does not verify"
        ) from None
    except KeyFormatError as exc:  # a pinned application key that is not usable
        raise CardFormatError(exc.message) from None


def _verify_app(policy: SignedPolicy, app_spki: bytes) -> None:
    """P4: the application key the client pinned signed it, and the policy names that key."""
    if policy.body.app_key_id != key_id_of(app_spki).hex():
        raise PolicyVerificationError("the policy is for another server's application key")
    sig = policy.signature_by(APP)
    if sig is None:
        raise PolicyVerificationError("the policy is not signed by the application key")
    _verify_signature(policy, sig, app_spki, "application key")


def officer_approvals(policy: SignedPolicy, officers_of: PolicyBody) -> tuple[str, ...]:
    """P6: check every officer signature on `policy` against the officers of `officers_of`
    (the policy in force); return the user names whose signatures verify."""
    names: list[str] = []
    for sig in policy.signatures:
        if sig.signer == APP:
            continue
        username = sig.signer[len(OFFICER_PREFIX) :]
        officer = officers_of.officer(username)
        if officer is None:
            raise PolicyVerificationError(
                f"the policy is signed by {username!r}, who is not an officer of policy "
                f"{officers_of.serial}"
            )
        _verify_signature(policy, sig, officer.spki_der, f"officer {username!r}")
        names.append(username)
    return tuple(names)


def verify_genesis(policy: SignedPolicy, app_spki: bytes) -> None:
    """Accept policy 1 of a server: serial 1, signed by the application key pinned at login."""
    if policy.serial != 1:
        raise PolicyVerificationError(f"the first policy has serial {policy.serial}, not 1")
    _verify_app(policy, app_spki)
    officer_approvals(policy, policy.body)


def accept_policy(held: SignedPolicy, new: SignedPolicy, app_spki: bytes) -> None:
    """Decide whether a client holding `held` may move to `new`; raise or return None.

    P5: `new` is the very next policy (serial + 1, naming `held` as previous). P4: signed by
    the application key. P6: every officer signature is by an officer of `held` and verifies.
    P7: at least `held.approvals` of them once `held` is complete, and `new` complete too.
    """
    if new.serial <= held.serial:
        raise PolicyVerificationError(
            f"the policy's serial {new.serial} is not higher than the pinned {held.serial}"
        )
    if new.serial != held.serial + 1 or new.body.previous != held.id:
        raise PolicyVerificationError(
            f"policy {new.serial} does not follow the pinned policy {held.serial}"
        )
    if new.version < held.version:
        # P8: an older format cannot state the newer rules; going back would drop them.
        raise PolicyVerificationError(
            f"policy {new.serial} is format version {new.version}, older than the pinned "
            f"policy's {held.version}"
        )
    _verify_app(new, app_spki)
    approvers = officer_approvals(new, held.body)
    if held.body.complete and len(approvers) < held.body.approvals:
        raise PolicyVerificationError(
            f"policy {new.serial} carries {len(approvers)} of the {held.body.approvals} "
            f"officer signatures policy {held.serial} requires"
        )
    if held.body.complete and not new.body.complete:
        # Back in the bootstrap the application key alone would sign the next change.
        raise PolicyVerificationError(
            f"policy {new.serial} names fewer officers than the approvals it requires: "
            "once complete, a policy must stay complete"
        )


def verify_chain(chain: list[SignedPolicy], app_spki: bytes, held: SignedPolicy | None) -> None:
    """Verify `chain` (consecutive policies) from `held`, or from policy 1 when none is held."""
    if not chain:
        return
    current = held
    for policy in chain:
        if current is None:
            verify_genesis(policy, app_spki)
        else:
            accept_policy(current, policy, app_spki)
        current = policy
