#!/usr/bin/env bash
# The container check: build the Dockerfile, run the image as a deployment would, check what it promises.
#   bash .ci/container.sh                  SQLite only
#   bash .ci/container.sh DATABASE_URL     then the same image on that PostgreSQL database (best a fresh one)
# .ci/run calls it while its PostgreSQL cluster is up. Needs root (rootful podman) on Debian; installs podman,
# runc and debootstrap when missing.
#
# This machine pulls no images, so the base is made here with debootstrap, once (Debian 12's Python 3.11, the
# project's floor), and passed to the Dockerfile's BASE argument. The podman flags below are this sandbox's (cgroup v1,
# low hard ulimits, TLS of the package index through the host's CA file): see ../shared/containers.md. None of them is
# in the Dockerfile.
#
# Checks, each exiting non-zero with the reason:
#   image: runs as a non-root user, declares /data a volume, keeps its HEALTHCHECK; holds no .git, .env, database,
#          secret key file or tests
#   SQLite: refuses to start without SECRET_KEY; from its own CMD with only ENVIRONMENT=production and SECRET_KEY,
#          /health answers and its HEALTHCHECK passes; the process is not root; a user signs up and logs in;
#          a new container on the same volume still knows the user
#   PostgreSQL: the same image with --network host and DATABASE_URL: /health, sign-up, log-in, a new container
#          still knows the user
set -euo pipefail
cd "$(dirname "$0")/.."

pg_url=${1:-}
base=localhost/python-base:bookworm
run_id=$$
image=localhost/fastapi-reference-ci:$run_id
container=fastapi-reference-ci-$run_id
volume=fastapi-reference-ci-$run_id
work=$(mktemp -d)
started=$SECONDS

# Without systemd, podman 4.3 logs an error for each healthcheck timer it cannot add or remove (even with
# --health-interval disable): harmless here, and dropped.
pm() {
  podman --runtime runc --cgroup-manager cgroupfs "$@" 2> >(grep -v 'unable to get systemd connection' >&2)
}
ulimits=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
# Containers started here: the sandbox's ulimits, and no healthcheck timer (podman's timers need systemd; the check
# runs the HEALTHCHECK itself, with `podman healthcheck run`).
run_flags=("${ulimits[@]}" --health-interval disable)

cleanup() {
  pm rm --force --volumes --ignore --time 0 "$container-a" "$container-b" "$container-probe" >/dev/null 2>&1 || true
  pm volume rm --force "$volume" >/dev/null 2>&1 || true
  pm rmi --force "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf 'container: %s\n' "$*"; }
fail() {
  printf 'container: FAILED: %s\n' "$*" >&2
  exit 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- tools and base ----------------------------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! pm image exists "$base"; then
  say "building the base $base with debootstrap (once; later runs reuse it)"
  if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" \
    http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log"
    fail "debootstrap of the base image"
  fi
  tar -C "$work/rootfs" -c . | pm import --quiet - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

# --- build ---------------------------------------------------------------------------------------------------------
# --format docker: the OCI format has no HEALTHCHECK, and podman would drop it.
say "building $image on $base"
if ! pm build --format docker "${ulimits[@]}" --network host \
  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --build-arg BASE="$base" --tag "$image" . >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log"
  fail "podman build"
fi
size=$(pm image inspect --format '{{.Size}}' "$image")
say "image built: $(((size + 500000) / 1000000)) MB ($size bytes)"

# --- the image -----------------------------------------------------------------------------------------------------
user=$(pm image inspect --format '{{.Config.User}}' "$image")
case "$user" in
  "" | root | 0 | 0:* | root:*) fail "the image runs as root (USER is '${user}'): add a USER line" ;;
esac
say "ok: USER is $user"
pm image inspect --format '{{json .Config.Volumes}}' "$image" | grep -q '"/data"' \
  || fail "the image declares no VOLUME /data"
say "ok: /data is a volume"
healthcheck=$(pm image inspect --format '{{json .Config.Healthcheck}}' "$image")
grep -q '/health' <<<"$healthcheck" || fail "the image has no HEALTHCHECK on /health (got: $healthcheck)"
say "ok: HEALTHCHECK on /health"

# The files, from an exported container: no repository, local settings, database, key file or tests.
pm create --name "$container-probe" "${run_flags[@]}" "$image" >/dev/null
pm export "$container-probe" | tar -t >"$work/files"
pm rm --volumes "$container-probe" >/dev/null
unwanted_patterns=(
  '(^|/)(\.git|\.env(\.[^/]*)?|\.secret_key[^/]*)(/|$)'         # a repository, local settings, the development key
  '^(\./)?(app|data)/.*\.(db|db-wal|db-shm|db-journal|sqlite3?)$' # a database
  '^(\./)?app/(test_[^/]*\.py|conftest\.py|tests/.*)$'           # the tests
)
unwanted=$(grep -E "$(IFS='|'; echo "${unwanted_patterns[*]}")" "$work/files" || true)
[ -z "$unwanted" ] || fail "the image holds files it must not: $(head -n 5 <<<"$unwanted" | tr '\n' ' ')"
app_files=$(grep -c '^\(\./\)\?app/' "$work/files")
say "ok: no .git, .env, database, key file or tests in the image ($app_files entries under /app)"

# --- running it ------------------------------------------------------------------------------------------------------
secret_key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
# A user of this run's own name: a database left by an earlier run does not refuse the sign-up.
login=container-$run_id
credentials="{\"email\": \"$login@example.com\", \"username\": \"$login\", \"password\": \"correct horse battery\"}"

# start NAME PORT [podman run options...] -- [command...]: start a container, wait up to 60 s for /health.
start() {
  local name=$1 port=$2
  shift 2
  local options=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do options+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  # -e SECRET_KEY without a value: podman takes it from this environment, so it stays out of `ps`.
  SECRET_KEY=$secret_key pm run --detach --name "$name" "${run_flags[@]}" -e ENVIRONMENT=production -e SECRET_KEY \
    "${options[@]}" "$image" "$@" >/dev/null
  for _ in $(seq 120); do
    if curl -fsS "http://127.0.0.1:$port/health" >"$work/health" 2>/dev/null; then
      say "ok: $name: GET /health -> 200 $(cat "$work/health")"
      return 0
    fi
    if [ "$(pm container inspect --format '{{.State.Running}}' "$name")" != true ]; then
      pm logs "$name" 2>&1 | tail -n 20
      fail "$name exited before /health answered"
    fi
    sleep 0.5
  done
  pm logs "$name" 2>&1 | tail -n 20
  fail "$name: /health did not answer within 60 s"
}

# http METHOD PATH PORT EXPECTED [curl options...]: one request; fails unless the status is EXPECTED (saying $hint).
hint=""
http() {
  local method=$1 path=$2 port=$3 expected=$4
  shift 4
  local code
  code=$(curl -sS -o "$work/body" -w '%{http_code}' -X "$method" "$@" "http://127.0.0.1:$port$path") || code=000
  [ "$code" = "$expected" ] \
    || fail "$method $path -> $code, expected $expected: $(head -c 300 "$work/body")${hint:+ ($hint)}"
  say "ok: $method $path -> $code"
}

sign_up() { http POST /api/v1/users/ "$1" 201 -H 'Content-Type: application/json' -d "$credentials"; }
log_in() {
  http POST /api/v1/auth/login "$1" 200 --data-urlencode username="$login" \
    --data-urlencode 'password=correct horse battery'
  local token
  token=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' <"$work/body")
  http GET /api/v1/users/me "$1" 200 -H "Authorization: Bearer $token"
}
not_root() {
  # PID 1 is uvicorn itself (CMD in exec form); its real and effective uid, from /proc.
  local uids
  uids=$(pm exec "$1" cat /proc/1/status | awk '/^Uid:/ {print $2, $3}')
  [ -n "$uids" ] || fail "$1: could not read the uid of PID 1"
  case " $uids " in *" 0 "*) fail "$1: the app runs as root (uid $uids)" ;; esac
  say "ok: $1: the app runs as uid ${uids%% *}, not root"
}

say "SQLite: without SECRET_KEY the image refuses to start"
if pm run --rm "${run_flags[@]}" -v "$volume:/data" "$image" >"$work/refused" 2>&1; then
  fail "the image started in production without a SECRET_KEY"
fi
grep -q 'Configuration error: SECRET_KEY' "$work/refused" \
  || fail "it stopped without the one-line reason, ending with: $(tail -n 1 "$work/refused")"
say "ok: $(grep 'Configuration error' "$work/refused")"

say "SQLite: from its own CMD, with only ENVIRONMENT=production and SECRET_KEY, on the volume $volume"
port=$(free_port)
start "$container-a" "$port" -p "127.0.0.1:$port:8000" -v "$volume:/data" --
pm healthcheck run "$container-a" >/dev/null 2>&1 || fail "$container-a: its HEALTHCHECK fails"
say "ok: $container-a: HEALTHCHECK passes"
not_root "$container-a"
sign_up "$port"
log_in "$port"
pm rm --force --volumes --time 10 "$container-a" >/dev/null
say "removed $container-a; a new container on the same volume:"
port=$(free_port)
start "$container-b" "$port" -p "127.0.0.1:$port:8000" -v "$volume:/data" --
hint="the user signed up in $container-a is gone: the data did not outlive its container"
log_in "$port"
hint=""
say "ok: SQLite: the user outlived the container"
pm rm --force --volumes --time 10 "$container-b" >/dev/null

if [ -n "$pg_url" ]; then
  # The cluster listens on the host's loopback: --network host, and uvicorn on a free port of the host.
  say "PostgreSQL: the same image with --network host and DATABASE_URL"
  port=$(free_port)
  pg_run=(--network host -e DATABASE_URL="$pg_url" --)
  app_command=(uvicorn main:app --host 127.0.0.1 --port "$port")
  start "$container-a" "$port" "${pg_run[@]}" "${app_command[@]}"
  grep -q '"database":"ok"' "$work/health" || fail "/health did not report the database"
  not_root "$container-a"
  sign_up "$port"
  log_in "$port"
  pm rm --force --volumes --time 10 "$container-a" >/dev/null
  say "removed $container-a; a new container on the same database:"
  start "$container-b" "$port" "${pg_run[@]}" "${app_command[@]}"
  hint="the user signed up in $container-a is gone from PostgreSQL"
  log_in "$port"
  hint=""
  say "ok: PostgreSQL: the user outlived the container"
fi

say "passed in $((SECONDS - started)) s; image size $(((size + 500000) / 1000000)) MB"
