#!/usr/bin/env bash
# Contract checks against a live `uvicorn main:app`: does the app answer what its OpenAPI
# schema promises, and can a generated client use it? Called by .ci/run; to run it alone,
# activate a virtual environment with requirements-dev.txt and `bash .ci/contract.sh`.
# 1. the app from the committed files, in a temp dir: a fresh SQLite file, BCRYPT_ROUNDS=4
# 2. Schemathesis on {API_V1_STR}/openapi.json as a signed-up user, bounded in examples and
#    time, with not_a_server_error, status_code_conformance, response_schema_conformance;
#    any finding fails
# 3. openapi-python-client (in its own virtual environment, so its pins never move the
#    app's) generates a client with no warnings; .ci/client_round_trip.py uses it
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

api=/api/v1
examples=${CONTRACT_MAX_EXAMPLES:-100}  # per operation and phase
max_seconds=${CONTRACT_MAX_SECONDS:-300}  # the whole Schemathesis run, then it is stopped

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- starting uvicorn main:app"
mkdir "$work/app"
git ls-files -z | xargs -0 cp --parents -t "$work/app"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
secret_key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
(
  cd "$work/app"
  SECRET_KEY="$secret_key" BCRYPT_ROUNDS=4 API_V1_STR="$api" DATABASE_URL="sqlite:///$work/contract.db" \
    LOG_LEVEL=WARNING exec uvicorn main:app --host 127.0.0.1 --port "$port"
) >"$work/uvicorn.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do
  curl -fsS "$base/health" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/uvicorn.log"; exit 1; }
  sleep 0.1
done
curl -fsS "$base/health" >/dev/null || { echo "the app did not answer /health"; cat "$work/uvicorn.log"; exit 1; }

echo "-- signing up a user and logging in"
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
curl -fsS -o /dev/null -H 'Content-Type: application/json' "$base$api/users/" \
  -d "{\"email\": \"contract@example.com\", \"username\": \"contract\", \"password\": \"$password\"}"
token=$(curl -fsS "$base$api/auth/login" --data-urlencode username=contract --data-urlencode "password=$password" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

echo "-- schemathesis: at most $examples examples per operation and phase, at most ${max_seconds}s"
schemathesis_run() {
  (cd "$work" && timeout --kill-after=10 "$max_seconds" schemathesis run "$base$api/openapi.json" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance \
    --header "Authorization: Bearer $token" --max-examples "$examples" --request-timeout 10 \
    --generation-database none --no-color "$@")
}
# Every operation but the two that end the user's token, which would turn the rest into 401s:
# DELETE /users/me (the user) and POST /auth/logout-all (every session).
schemathesis_run --exclude-operation-id users-delete_user_me --exclude-operation-id auth-logout_all
# Then those alone: their first call ends the token, later ones must get the documented 401.
schemathesis_run --include-operation-id auth-logout_all --include-operation-id users-delete_user_me \
  --phases examples,coverage,fuzzing
if grep -E 'Traceback|ERROR' "$work/uvicorn.log"; then echo "the app logged errors"; exit 1; fi

echo "-- openapi-python-client: generate a client, then the round trip"
python3 -m venv "$work/client-venv"
"$work/client-venv/bin/pip" install --quiet --disable-pip-version-check openapi-python-client==0.29.1
printf 'project_name_override: reference-api-client\npackage_name_override: reference_api_client\n' >"$work/client.yml"
# PATH: the generator formats its output with the ruff installed beside it.
(cd "$work" && PATH="$work/client-venv/bin:$PATH" openapi-python-client generate --url "$base$api/openapi.json" \
  --config client.yml --meta setup --output-path "$work/client" --fail-on-warning) 2>&1 | tee "$work/generate.log"
if grep -qi warning "$work/generate.log"; then echo "openapi-python-client warned"; exit 1; fi
"$work/client-venv/bin/pip" install --quiet --disable-pip-version-check "$work/client"
"$work/client-venv/bin/python" "$repo/.ci/client_round_trip.py" "$base"
