#!/usr/bin/env bash
# Property-based tests of the REST API against a live node: schemathesis
# reads the OpenAPI document the node serves (GET /api/v1/openapi.json),
# generates valid and invalid requests for every operation, and fails on
# any 5xx answer and on any answer whose status, content type, headers or
# body the document does not describe.
#
# Installs schemathesis (pinned) into a virtualenv under the cargo target
# folder, starts a two-node cluster on loopback with `ferry cluster up`,
# runs, and stops it. `/api/v1/events` is left out: it is an endless
# Server-Sent Events stream, which schemathesis cannot read to an end
# (tests/events.rs covers it). Usage: tests/api/schemathesis.sh [EXTRA ARGS]
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=4.32.5
TARGET=${CARGO_TARGET_DIR:-target}
VENV="$(mkdir -p "$TARGET" && cd "$TARGET" && pwd)/schemathesis-venv"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "installing schemathesis $VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"
fi

cargo build --quiet
FERRY="$(cd "$TARGET" && pwd)/debug/ferry"
WORK=$(mktemp -d)
stop() {
  (cd "$WORK" && "$FERRY" cluster down api-test.toml >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap stop EXIT
cat > "$WORK/api-test.toml" <<TOML
name = "api-test"
nodes = ["a", "b"]
host = "127.0.0.1"
quic_base_port = 17401
api_base_port = 18401
state_dir = "state"
TOML
(cd "$WORK" && "$FERRY" cluster up api-test.toml >/dev/null)
TOKEN=$(cat "$WORK"/state/a/data/admin.token)
echo "hello" > "$WORK"/state/a/out/hello.txt

# Run from the temporary folder: schemathesis keeps a cache in its working folder.
cd "$WORK"
"$VENV/bin/schemathesis" run "https://127.0.0.1:18401/api/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --tls-verify "$WORK/state/certs/ca.pem" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --exclude-path /api/v1/events \
  --phases examples,coverage,fuzzing \
  --max-examples 150 \
  --seed 20261129 \
  --workers 2 \
  --request-timeout 30 \
  --no-color \
  --report-dir "$WORK/report" \
  --generation-database none \
  "$@"
