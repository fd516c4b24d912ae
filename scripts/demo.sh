#!/usr/bin/env bash
# The hsm-vault demo: everything on one machine, with private SoftHSM tokens under .demo/.
# Run it with `make demo` (which installs what it needs first). It cleans up after itself and
# can be run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
HV=$ROOT/.venv/bin/hsm-vault
rm -rf "$DEMO"
mkdir -p "$DEMO"
trap 'rm -rf "$DEMO"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

export HSM_VAULT_PIN=demo-pin-0000  # the demo tokens' user PIN (scripts pass PINs this way)
step "Initialise a SoftHSM token for alice (in $DEMO, not /etc)"
eval "$(softhsm/init-token "$DEMO/softhsm" alice)"
export HSM_VAULT_PKCS11_MODULE=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -1)
export HSM_VAULT_HOME=$DEMO/alice

step "The tokens the module offers"
run "$HV" token list

step "Generate alice's key pair ON the token (non-extractable)"
run "$HV" key generate alice-key --token alice

step "List and show it"
run "$HV" key list --token alice
run "$HV" key show pkcs11:token=alice\;object=alice-key

step "Export the public key (the private key cannot be exported)"
run "$HV" key export-public alice-key --token alice

step "Done"
