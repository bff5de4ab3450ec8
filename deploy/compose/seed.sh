#!/bin/sh
# One-shot seeder of the compose loop (docker-compose.yml, service `seed`; the openbao image's
# sh, bao and busybox wget). The dev server already mounts KV v2 at secret/: nothing is enabled.
# It writes what a platform team writes once by hand (docs/production.md):
#   1. the management key, at the path deploy/compose/config/dev.yaml names;
#   2. the first consumer secret: a key made at the emulator (POST /_emulator/keys), its value
#      and id (so the first rotation knows which key to delete) - only if the secret is absent,
#      so a second `docker compose up` leaves a rotated secret alone;
#   3. the Vault policies and a periodic token for each side: the agent's token can read its one
#      secret, the rotator's holds `vault-rotator vault-policy rotator`'s rules.
# Key values go through stdin (`field=-`), never a command line.
# Every path and address can be overridden (tests/test_deploy.py runs this script on loopback).
set -eu

: "${BAO_ADDR:?set BAO_ADDR}" "${BAO_TOKEN:?set BAO_TOKEN}"
EMULATOR_URL=${EMULATOR_URL:-http://emulator:8787}
MANAGEMENT_KEY=${MANAGEMENT_KEY:-lr_mgmt_compose_demo_key}
POLICY_DIR=${POLICY_DIR:-/compose}
AGENT_AUTH=${AGENT_AUTH:-/agent/auth}
ROTATOR_AUTH=${ROTATOR_AUTH:-/rotator/auth}
RENDERED=${RENDERED:-/rendered}
OWNER=${OWNER-10001:10001}   # the uid:gid the agent, rotator and consumer run as; empty: no chown

printf '%s' "$MANAGEMENT_KEY" | bao kv put -mount=secret arouter/dev/management key=- >/dev/null
echo "seed: management key written to secret/arouter/dev/management"

if bao kv get -mount=secret arouter/dev/demo-app >/dev/null 2>&1; then
    echo "seed: secret/arouter/dev/demo-app exists; left as it is"
else
    answer=$(wget -q -O - --header 'Content-Type: application/json' \
        --post-data '{"name":"demo-app","allowed_providers":["openai","anthropic"],"spending_limit":25}' \
        "$EMULATOR_URL/_emulator/keys")
    key_id=$(printf '%s' "$answer" | sed -n 's/.*"id" *: *"\([^"]*\)".*/\1/p')
    key=$(printf '%s' "$answer" | sed -n 's/.*"key" *: *"\([^"]*\)".*/\1/p')
    if [ -z "$key_id" ] || [ -z "$key" ]; then
        echo "seed: the emulator answered no key id and value" >&2
        exit 1
    fi
    printf '%s' "$key" | bao kv put -mount=secret -cas=0 arouter/dev/demo-app \
        api_key=- key_id="$key_id" owner=demo-team >/dev/null
    echo "seed: secret/arouter/dev/demo-app serves $key_id"
fi

bao policy write demo-app-consumer "$POLICY_DIR/consumer-policy.hcl" >/dev/null
bao policy write vault-rotator "$POLICY_DIR/rotator-policy.hcl" >/dev/null
umask 077
bao token create -orphan -period=24h -policy=demo-app-consumer -display-name=demo-app-agent \
    -field=token >"$AGENT_AUTH/token"
bao token create -orphan -period=24h -policy=vault-rotator -display-name=vault-rotator \
    -field=token >"$ROTATOR_AUTH/token"
if [ -n "$OWNER" ]; then
    chown "$OWNER" "$AGENT_AUTH/token" "$ROTATOR_AUTH/token" "$RENDERED"
fi
echo "seed: policies demo-app-consumer and vault-rotator written, one token each"
