#!/usr/bin/env bash
# The hsm-vault demo: the whole flow on one machine, through the CLI.
#
# A server with its own token, an officer (olga), and three users (alice, bob, carol), each
# with their own SoftHSM token (olga approves cards on hers), all under .demo/ (nothing in /etc or /var/lib). Run it with
# `make demo`, which installs what it needs first. It cleans up after itself and can be run
# again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
HV=$ROOT/.venv/bin/hsm-vault
PY=$ROOT/.venv/bin/python
SERVER_PID=

cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DEMO"
  exit "$rc"
}
trap cleanup EXIT
rm -rf "$DEMO"
mkdir -p "$DEMO"

bold=$'\033[1m' green=$'\033[32m' red=$'\033[31m' off=$'\033[0m'
[ -t 1 ] || { bold= green= red= off=; }
n=0
step() { n=$((n + 1)); printf '\n%s== %d. %s%s\n' "$bold" "$n" "$*" "$off"; }
# `as USER CMD...`: run hsm-vault as USER (their own config and keyring), echoing the command.
as() {
  local who=$1; shift
  printf '%s$ %s\n' "[$who] " "hsm-vault $*"
  HSM_VAULT_HOME=$DEMO/home/$who "$HV" "$@"
}
# `refused USER CMD...`: the same, for a command that must fail; the demo fails if it does not.
refused() {
  if as "$@"; then
    printf '%sFAIL: that should have been refused%s\n' "$red" "$off"
    exit 1
  fi
  printf '%s-> refused, as it must be%s\n' "$green" "$off"
}

# --- tokens --------------------------------------------------------------------------------
step "Five SoftHSM tokens: the server's, olga's, alice's, bob's and carol's (in .demo/softhsm)"
export HSM_VAULT_PIN=demo-user-pin  # scripts give PINs by environment or file, never argv
for t in server olga alice bob carol; do
  eval "$(softhsm/init-token "$DEMO/softhsm" "$t")"
done
HSM_VAULT_PKCS11_MODULE=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so \
  2>/dev/null | head -1)
export SOFTHSM2_CONF HSM_VAULT_PKCS11_MODULE
"$HV" token list

# --- server --------------------------------------------------------------------------------
step "Server set-up: database, config, the application key ON the server's token, and the
signed policy: each card needs 1 officer approval, signed on the officer's own token"
printf '%s\n' "$HSM_VAULT_PIN" > "$DEMO/server.pin"
chmod 600 "$DEMO/server.pin"
DATA=$DEMO/server
"$HV" server init --data "$DATA" --token server --pin-file "$DEMO/server.pin" --approvals 1 \
  --json > "$DEMO/init.json"
APP_FP=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' \
  "$DEMO/init.json")
echo "application key fingerprint: $APP_FP  (users get this out of band)"

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
step "Start the server on $URL"
"$HV" server run --data "$DATA" --port "$PORT" --pin-file "$DEMO/server.pin" \
  --log-level warning > "$DEMO/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -fsS "$URL/v1/app" > /dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$URL/v1/app" > /dev/null || { cat "$DEMO/server.log"; exit 1; }
echo "server is up (pid $SERVER_PID)"

step "The server operator enrols an officer (olga) and three users"
declare -A CODE
for who in olga:officer alice:user bob:user carol:user; do
  name=${who%%:*} role=${who##*:}
  CODE[$name]=$("$HV" server add-user "$name" --role "$role" --data "$DATA" --json |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin)["enrolment_code"])')
  echo "enrolled $name as $role (one-time code handed over privately)"
done

step "Everyone logs in with their code and pins the application key"
for name in olga alice bob carol; do
  HSM_VAULT_ENROLMENT_CODE=${CODE[$name]} as "$name" login --server "$URL" --user "$name" \
    --app-fingerprint "$APP_FP" --yes
done
as alice whoami

# --- the officer ceremony ------------------------------------------------------------------
step "olga makes her officer card on her token; the operator compares its fingerprint with her
and names her in the policy (bootstrap: signed by the application key alone)"
as olga key generate olga-key --type ec-p256 --token olga
as olga card create olga --key olga-key --token olga
as olga card publish olga
"$HV" server add-officer olga --data "$DATA" --pin-file "$DEMO/server.pin" --yes
as alice policy show

# --- keys and cards ------------------------------------------------------------------------
declare -A KEYTYPE=([alice]=ec-p256 [bob]=rsa-3072 [carol]=ec-p384)
for name in alice bob carol; do
  step "$name generates a ${KEYTYPE[$name]} key ON the token, makes a card, and publishes it"
  as "$name" key generate "$name-key" --type "${KEYTYPE[$name]}" --token "$name"
  as "$name" card create "$name" --key "$name-key" --token "$name"
  as "$name" card publish "$name"
done

step "olga (officer) sees the pending cards and approves them, signing each ON her token
(the server adds its application signature once the policy's approvals are in)"
as olga card pending
for id in $(HSM_VAULT_HOME=$DEMO/home/olga "$HV" card pending --json |
  "$PY" -c 'import json,sys; print(" ".join(c["id"] for c in json.load(sys.stdin)))'); do
  as olga card approve "$id"
done

step "alice finds bob's card: self, app and officer signatures verified against the pinned
key and the pinned policy"
as alice card find bob
as alice card find alice
as alice card show bob

step "A card that carries only the server's signature is refused: the server cannot forge
approval. (mallory's card, signed by the application key straight into the database)"
as carol key generate mallory-key --type ec-p256 --token carol
HSM_VAULT_HOME=$DEMO/home/mallory "$HV" card create mallory --key mallory-key --token carol \
  --json > "$DEMO/mallory.json"
"$PY" - "$DATA" "$DEMO/mallory.json" <<'PYEOF'
import json, sys
from pathlib import Path
from hsm_vault.cards import Card, sign_card
from hsm_vault.server.db import CardRecord, CardStatus, User, make_engine, make_sessionmaker, utcnow
from hsm_vault.server.settings import ServerSettings
from hsm_vault.token import open_session
settings = ServerSettings.load(Path(sys.argv[1]))
card = Card.from_text(json.load(open(sys.argv[2]))["card"])
with open_session(settings.token, pin=settings.pin_source()) as ts:
    key = ts.find_key(settings.app_key)
    card = sign_card(card, "app", key.spki_der, key.key_type.signature_algorithm,
                     lambda m: ts.sign(key, m))
engine = make_engine(settings.effective_database_url)
with make_sessionmaker(engine)() as db:
    owner = db.query(User).filter_by(name="carol").one()
    db.add(CardRecord(id=card.id, owner_id=owner.id, identity="mallory", text=card.to_text(),
                      status=CardStatus.APPROVED.value, published_at=utcnow(),
                      decided_at=utcnow(), decided_by="nobody"))
    db.commit()
engine.dispose()
print("inserted an app-signed card for mallory into the server's database")
PYEOF
refused alice card find mallory

# --- encrypt, store, decrypt ---------------------------------------------------------------
step "alice encrypts a file for alice and bob (no token needed to encrypt)"
printf 'Quarterly numbers: 42.\nFor alice and bob only.\n' > "$DEMO/report.txt"
as alice encrypt --to alice --to bob -o "$DEMO/report.txt.hsmv" "$DEMO/report.txt"
as alice inspect "$DEMO/report.txt.hsmv"

step "alice uploads the ciphertext to the server's blob store"
as alice store put "$DEMO/report.txt.hsmv" --name report.txt.hsmv
as alice store list

step "bob downloads it and decrypts it on his token"
as bob store get alice/report.txt.hsmv -o "$DEMO/bob-report.txt.hsmv"
as bob decrypt -o "$DEMO/bob-report.txt" "$DEMO/bob-report.txt.hsmv"   # token found from bob's card
cat "$DEMO/bob-report.txt"

step "alice decrypts her copy on her token"
as alice decrypt --token alice -o "$DEMO/alice-report.txt" "$DEMO/report.txt.hsmv"
cmp "$DEMO/report.txt" "$DEMO/alice-report.txt" && echo "alice's plaintext matches the original"

step "The same without a local ciphertext: encrypt straight into the store, decrypt as it downloads"
as alice encrypt --to alice --to bob --upload -o minutes.txt.hsmv "$DEMO/report.txt"
as bob decrypt --from-store alice/minutes.txt.hsmv -o "$DEMO/bob-minutes.txt"
cmp "$DEMO/report.txt" "$DEMO/bob-minutes.txt" && echo "bob's plaintext matches the original"

step "carol is not a recipient: the server will not give her the blob, her token cannot open it"
refused carol store get alice/report.txt.hsmv -o "$DEMO/carol.hsmv"
refused carol decrypt --token carol -o "$DEMO/carol-report.txt" "$DEMO/report.txt.hsmv"
[ ! -e "$DEMO/carol-report.txt" ] && echo "no output file was left behind"

# --- revocation ----------------------------------------------------------------------------
step "bob revokes his card (signed on his token); alice refreshes her keyring"
as bob card revoke bob --reason key-compromise --key bob-key --token bob
as alice card refresh

step "New files can no longer be encrypted to bob"
refused alice encrypt --to bob -o "$DEMO/after.hsmv" "$DEMO/report.txt"

step "Done: the whole flow ran; .demo/ is removed on exit"
