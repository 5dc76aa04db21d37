#!/usr/bin/env bash
# Offline events end to end, against the fake portal (fake-bitrix24):
# install the application, stop b24-journal, let the portal queue changes
# while it is down, start it again and watch it pull them into the journal.
#
#   scripts/offline-demo.sh
#
# Everything runs on loopback in a temporary directory, removed at the end.
# It uses --offline-allow-http-loopback, the test-only switch that lets the
# service call the fake portal over plain http: never use it in production.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p b24-journal -p fake-bitrix24
BIN=target/release/b24-journal
FAKE=target/release/fake-bitrix24
PORT=${PORT:-8090}
URL=http://127.0.0.1:$PORT
READ=demo-read-token-7f3a9c1e
APP_TOKEN=demo0app0token0f3a9c1e5b7d2a4c6

work=$(mktemp -d)
jpid=
cleanup() {
    [ -n "$jpid" ] && kill "$jpid" 2>/dev/null || true
    exec 3>&- 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The fake portal reads commands on stdin; keep a pipe open to it.
mkfifo "$work/fake.in"
"$FAKE" <"$work/fake.in" >"$work/fake.out" &
exec 3>"$work/fake.in"
until grep -q '^DOMAIN=' "$work/fake.out" 2>/dev/null; do sleep 0.1; done
# CLIENT_ID, CLIENT_SECRET, OAUTH_SERVER, MEMBER_ID, DOMAIN
eval "$(grep '^[A-Z_]*=' "$work/fake.out")"
say() { printf '\n== %s\n' "$*"; }
fake() { echo "$*" >&3; sleep 0.5; tail -n 1 "$work/fake.out"; }

"$BIN" keygen --to "$work/secrets.key"

start() {
    B24J_APP_CLIENT_SECRET=$CLIENT_SECRET "$BIN" serve --listen "127.0.0.1:$PORT" \
        --data-dir "$work/data" --read-token "$READ" --portal "$MEMBER_ID=$APP_TOKEN" \
        --offline pull --app-client-id "$CLIENT_ID" --oauth-server "$OAUTH_SERVER" \
        --secrets-key-file "$work/secrets.key" --offline-allow-http-loopback \
        --offline-poll 2 2>>"$work/journal.log" &
    jpid=$!
    until curl -sf "$URL/openapi.json" >/dev/null; do sleep 0.1; done
}
stop() { kill -TERM "$jpid"; wait "$jpid" || true; jpid=; }
portal() {
    curl -s -H "Authorization: Bearer $READ" "$URL/v1/portals" |
        python3 -c 'import json,sys; [print(json.dumps(p["offline"])) for p in json.load(sys.stdin)["portals"] if p["offline"]]'
}

say "b24-journal pulls $DOMAIN (member $MEMBER_ID)"
start
say "the admin installs the application: the portal posts ONAPPINSTALL"
fake install "$APP_TOKEN" "$URL/v1/bitrix24/events"
sleep 1
portal

say "b24-journal goes down; meanwhile deals change on the portal"
stop
fake change ONCRMDEALADD 101
fake change ONCRMDEALUPDATE 101
fake change ONCRMDEALUPDATE 101   # merged by the portal into one record
fake change ONCRMDEALUPDATE 102
fake status

say "b24-journal comes back and pulls the queue"
start
sleep 3
portal
fake status
say "the journal (newest first)"
curl -s -H "Authorization: Bearer $READ" "$URL/v1/portals/$MEMBER_ID/events" |
    python3 -c 'import json,sys
for e in json.load(sys.stdin)["events"]:
    print(e["seq"], e["event"], e["entity_id"], e["source"], e["message_id"])'
stop
