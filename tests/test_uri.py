"""RFC 7512 PKCS#11 URIs: the RFC's own examples (section 3), round trips, and bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hsm_vault.token.uri import PKCS11URI, URIError, format_uri, parse_uri

RFC_EXAMPLES = [
    "pkcs11:",
    "pkcs11:object=my-pubkey;type=public",
    "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
    "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;"
    "model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
    "?pin-source=file:/etc/token_pin",
    "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
    "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
    "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
    "pkcs11:slot-description=Sun%20Metaslot",
    "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;"
    "library-version=1.23",
    "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ef%fe;"
    "object=SomeObject",
    "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
    "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;"
    "type=cert",
    "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a"
    "?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
]


@pytest.mark.parametrize("text", RFC_EXAMPLES)
def test_rfc_examples_parse_and_round_trip(text: str) -> None:
    uri = parse_uri(text)
    # A PIN is never written back out, so compare without it.
    assert parse_uri(format_uri(uri)) == replace(uri, pin_value=None)


def test_rfc_example_values_are_decoded() -> None:
    uri = parse_uri(RFC_EXAMPLES[3])
    assert uri.token == "The Software PKCS#11 Softtoken"
    assert uri.manufacturer == "Snake Oil, Inc."
    assert uri.model == "1.0"
    assert uri.object == "my-certificate"
    assert uri.type == "cert"
    assert uri.id == bytes.fromhex("69953e5cf4bdec91")
    assert uri.serial == ""
    assert uri.pin_source == "file:/etc/token_pin"


def test_percent_encoding_of_reserved_and_non_ascii() -> None:
    assert parse_uri(RFC_EXAMPLES[10]).token == "A name with a substring %;"
    assert parse_uri(RFC_EXAMPLES[11]).token == "Name with a small A with acute: á"
    assert parse_uri(RFC_EXAMPLES[9]).id == bytes.fromhex("010203baddeffe")
    text = format_uri(PKCS11URI(token="a;b?c%d é", object="x/y"))
    assert text == "pkcs11:token=a%3Bb%3Fc%25d%20%C3%A9;object=x%2Fy"
    assert parse_uri(text).token == "a;b?c%d é"


def test_unknown_attributes_are_kept_and_pin_value_is_not_shown() -> None:
    uri = parse_uri(RFC_EXAMPLES[12])
    assert uri.other_path == (("vendor-aaa", "value-a"),)
    assert uri.other_query == (("vendor-bbb", "value-b"),)
    secret = parse_uri(RFC_EXAMPLES[6])
    assert secret.pin_value == "the-pin"
    assert "the-pin" not in repr(secret)
    assert "the-pin" not in format_uri(secret)


def test_id_is_formatted_as_percent_encoded_bytes() -> None:
    assert format_uri(PKCS11URI(token="alice", object="k", id=b"\x00\xff")) == (
        "pkcs11:token=alice;object=k;id=%00%FF"
    )


@pytest.mark.parametrize(
    "text",
    [
        "token=alice",
        "pkcs12:token=alice",
        "pkcs11:token",
        "pkcs11:token=a;token=b",
        "pkcs11:token=%zz",
        "pkcs11:token=%4",
        "pkcs11:type=banana",
        "pkcs11:slot-id=abc",
        "pkcs11:token=%ff%fe",
    ],
)
def test_malformed_uris_are_rejected_with_a_reason(text: str) -> None:
    with pytest.raises(URIError) as err:
        parse_uri(text)
    assert err.value.hint
