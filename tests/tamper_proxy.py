"""A tiny, real HTTP proxy that tampers with a real server's card answers (for tests).

    python tamper_proxy.py UPSTREAM_URL PORT MODE

Forwards every request to UPSTREAM_URL and passes the answers back, except that in the JSON
answers of `GET /v1/cards...` it changes every card according to MODE:

- `pass`: nothing (shows the proxy itself is harmless).
- `swap-key`: the attacker makes a card for the same identity on a key of their own, with a
  valid self signature, and carries over the real card's "app" signature.
- `forge-app`: the card is kept, but its "app" signature is replaced by one the attacker made
  with their own key while claiming the application key's key id.
- `swap-app`: `GET /v1/app` answers with the attacker's key instead of the application key.
- `flaky`: the first request for each method and path gets a 503 problem document (not
  forwarded); later ones are forwarded.
- `slow`: every answer is held back for 3 seconds.

Prints "ready" on stdout once it listens.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_vault.algorithms import spki_fingerprint
from hsm_vault.cards import SELF, Card, CardSignature

SEEN: set[tuple[str, str]] = set()
SEEN_LOCK = threading.Lock()
ATTACKER = ec.generate_private_key(ec.SECP256R1())
ATTACKER_SPKI = ATTACKER.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


def attacker_sign(message: bytes) -> bytes:
    return ATTACKER.sign(message, ec.ECDSA(hashes.SHA256()))


def tamper_card(text: str, mode: str) -> tuple[str, str]:
    """The tampered card text and id."""
    card = Card.from_text(text)
    real_app = card.signature_by("app")
    if mode == "swap-key":
        fake = Card(
            replace(
                card.snapshot,
                spki_der=ATTACKER_SPKI,
                key_type="ec-p256",
                wrap_method="ecdh",
                oaep_hash=None,
            )
        )
        own = CardSignature(
            SELF,
            bytes.fromhex(spki_fingerprint(ATTACKER_SPKI)),
            "ecdsa-sha256",
            attacker_sign(fake.signing_message(SELF)),
        )
        fake = fake.with_signature(own)
        if real_app is not None:
            fake = fake.with_signature(real_app)
        return fake.to_text(), fake.id
    if mode == "forge-app":
        key_id = real_app.key_id if real_app else bytes(32)
        forged = CardSignature(
            "app", key_id, "ecdsa-sha256", attacker_sign(card.signing_message("app"))
        )
        tampered = card.with_signature(forged)
        return tampered.to_text(), tampered.id
    return text, card.id


def tamper_body(path: str, body: bytes, mode: str) -> bytes:
    if mode == "swap-app" and path.startswith("/v1/app"):
        obj = json.loads(body)
        obj["app_key"]["spki"] = base64.b64encode(ATTACKER_SPKI).decode()
        obj["app_key"]["fingerprint"] = spki_fingerprint(ATTACKER_SPKI)
        return json.dumps(obj).encode()
    if mode not in ("swap-key", "forge-app") or not path.startswith("/v1/cards"):
        return body
    obj = json.loads(body)
    records = obj["cards"] if isinstance(obj, dict) and "cards" in obj else [obj]
    for record in records:
        if isinstance(record, dict) and "card" in record:
            record["card"], record["id"] = tamper_card(record["card"], mode)
    return json.dumps(obj).encode()


class Handler(BaseHTTPRequestHandler):
    upstream = urlsplit("http://127.0.0.1:1")
    mode = "pass"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length) if length else None
        if self.mode == "slow":
            time.sleep(3)
        if self.mode == "flaky":
            with SEEN_LOCK:
                first = (self.command, self.path) not in SEEN
                SEEN.add((self.command, self.path))
            if first:
                body = (
                    b'{"type":"about:blank","title":"Service Unavailable","status":503,'
                    b'"detail":"flaky proxy"}'
                )
                self.send_response(503)
                self.send_header("Content-Type", "application/problem+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "connection", "content-length")
        }
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request(self.command, self.path, body=request_body, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status == 200 and self.command == "GET":
                body = tamper_body(self.path, body, self.mode)
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in (
                    "content-length",
                    "connection",
                    "transfer-encoding",
                    "date",
                    "server",
                ):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward


def main() -> None:
    upstream, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Handler.upstream = urlsplit(upstream)
    Handler.mode = mode
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
