#!/usr/bin/env bash
# Benchmark: requests/s and p50/p99 latency of GET /registry/credentials (each one a credential
# issued and its audit record durably committed before the reply) and GET /token, next to a
# trivial GET /healthz, in one run, at 64 concurrent connections, with RS256 access tokens from
# the real oidc-provider used by the tests. The credential path runs twice: on the embedded SQLite
# store (WAL, synchronous=FULL) and on a local PostgreSQL (fsync on, synchronous_commit on), the
# store of several replicas. Prints a table and the throughput ratios.
#
#   scripts/bench.sh [DURATION_SECONDS]      (default 10 per endpoint)
#
# The load generator (wrk) and the broker share this machine's cores; the ratios between
# endpoints measured in one run are what to compare, not the absolute figures across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
# CPU time is sampled over all but the first and last moments of a run: it needs 2 s or more.
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 2 ]] || { echo "usage: $0 [SECONDS >= 2]" >&2; exit 2; }
CONNECTIONS=64
THREADS=2

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package) for the load generator" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
scripts/setup-test-deps.sh >/dev/null
cargo build --release -q -p rise-backend

work="$(mktemp -d)"
pids=()
pg_stop=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${#pg_stop[@]}" -gt 0 ]; then "${pg_stop[@]}" >/dev/null 2>&1 || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A real OIDC provider issuing RS256 JWT access tokens.
node rise-backend/tests/fixtures/oidc/server.mjs --port 0 >"$work/oidc.out" 2>"$work/oidc.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^READY ' "$work/oidc.out" 2>/dev/null && break; sleep 0.1; done
issuer="$(sed -n 's/^READY //p' "$work/oidc.out")"
[ -n "$issuer" ] || { echo "oidc-provider did not start" >&2; cat "$work/oidc.err" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A durable local PostgreSQL (default fsync and synchronous_commit) for the second store.
pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
pg_dir="$work/pg"
mkdir -p "$pg_dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$pg_dir"; chmod 711 "$work"; as_pg=(runuser -u postgres --); fi
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U rise --auth=trust --encoding=UTF8 --locale=C >/dev/null
pg_port="$(free_port)"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pg_dir -c max_connections=200" start >/dev/null
pg_stop=("${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop)
"${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U rise rise

port="$(free_port)"
pg_rise_port="$(free_port)"
cat >"$work/rise.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
data_dir = "$work/data"

[auth.issuers.bench]
issuer = "$issuer"
audience = "rise"
insecure_http = true

[registry]
type = "distribution"
url = "127.0.0.1:5000"

[projects.my-app]
[[projects.my-app.allow]]
issuer = "bench"
groups = ["ci"]
actions = ["push", "pull"]

# One caller from one address at tens of thousands of requests per second: far above the
# defaults, so raise them (rather than disable: the limiter stays in the measured path).
[rate_limit]
per_subject = { rate = "1000000000/s", burst = 1000000 }
per_ip = { rate = "1000000000/s", burst = 1000000 }
TOML
RISE_LOG=warn target/release/rise-backend serve --config "$work/rise.toml" 2>"$work/rise.err" &
rise_pid=$!
pids+=($rise_pid)
# The same broker on PostgreSQL: only the store (and so where the keys live) differs.
sed -e "s|^listen = .*|listen = \"127.0.0.1:$pg_rise_port\"|" -e "s|^data_dir = .*|data_dir = \"$work/data-pg\"|" \
  "$work/rise.toml" >"$work/rise-pg.toml"
cat >>"$work/rise-pg.toml" <<TOML

[database]
url = "postgres://rise@127.0.0.1:$pg_port/rise"

[keys]
sealing_key = "$(head -c 32 /dev/urandom | base64)"
TOML
RISE_LOG=warn target/release/rise-backend serve --config "$work/rise-pg.toml" 2>"$work/rise-pg.err" &
rise_pg_pid=$!
pids+=($rise_pg_pid)
base="http://127.0.0.1:$port"
pg_base="http://127.0.0.1:$pg_rise_port"
for _ in $(seq 100); do curl -sf "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 100); do curl -sf "$pg_base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$pg_base/readyz" >/dev/null || { echo "rise on PostgreSQL did not become ready" >&2; cat "$work/rise-pg.err" >&2; exit 1; }

token="$(curl -sf -u ci-app:ci-secret -d grant_type=client_credentials -d resource=urn:rise "$issuer/token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
alg="$(python3 - "$token" <<'PY'
import base64, json, sys
h = sys.argv[1].split(".")[0]
print(json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["alg"])
PY
)"
creds="$(curl -sf -H "Authorization: Bearer $token" "$base/registry/credentials?project=my-app")"
basic="$(printf '%s' "$creds" | python3 -c 'import json,sys,base64; c=json.load(sys.stdin)["credentials"]; print(base64.b64encode((c["username"]+":"+c["password"]).encode()).decode())')"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name, server pid, url, header...
  local name="$1" server="$2" url="$3"; shift 3
  local args=()
  for h in "$@"; do args+=(-H "$h"); done
  # One warm-up second, then the measured run, during which the CPU time of the broker and of
  # wrk is sampled: where the cores went, per request.
  wrk -t"$THREADS" -c"$CONNECTIONS" -d1s "${args[@]}" "$url" >/dev/null
  local s0 w0 s1 w1 t0 tw0 tw1 t1
  t0="$(date +%s.%N)"
  s0="$(cpu_ticks "$server")"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${args[@]}" "$url" >"$work/$name.txt" &
  local wrk_pid=$!
  sleep 0.2
  tw0="$(date +%s.%N)"
  w0="$(cpu_ticks "$wrk_pid")"
  sleep "$((DURATION - 1))"
  tw1="$(date +%s.%N)"
  w1="$(cpu_ticks "$wrk_pid")"
  wait "$wrk_pid"
  s1="$(cpu_ticks "$server")"
  t1="$(date +%s.%N)"
  local rps p50 p99 non2xx
  rps="$(awk '/^Requests\/sec/ {print $2}' "$work/$name.txt")"
  p50="$(awk '$1=="50%" {print $2}' "$work/$name.txt")"
  p99="$(awk '$1=="99%" {print $2}' "$work/$name.txt")"
  non2xx="$(awk '/Non-2xx/ {print $NF}' "$work/$name.txt")"
  local cpu
  cpu="$(python3 -c "
hz, rps = $(getconf CLK_TCK), $rps
server = ($s1 - $s0) / hz / ($t1 - $t0) / rps * 1e6
client = ($w1 - $w0) / hz / ($tw1 - $tw0) / rps * 1e6
print(f'{server:8.1f} {client:8.1f}')")"
  printf '%-24s %12s %10s %10s %s %s\n' "$name" "$rps" "$p50" "$p99" "$cpu" "${non2xx:+(non-2xx: $non2xx)}"
  echo "$rps" >"$work/$name.rps"
}

echo "Rise benchmark: $CONNECTIONS connections, ${DURATION}s per endpoint, caller tokens $alg from oidc-provider, $(nproc) cores"
echo "cpu us/req: CPU time per request of the broker (PostgreSQL's own processes not included) and of wrk"
echo "broker log level: warn (the info line each issuance writes at the default level is not in these figures)"
printf '%-24s %12s %10s %10s %8s %8s\n' endpoint "requests/s" p50 p99 "rise" "wrk"
run healthz "$rise_pid" "$base/healthz"
# The same authentication (cached JWT check) and rate limits as the credential path, with
# neither a grant nor an audit record: what the durable audit write costs shows against it.
run whoami "$rise_pid" "$base/auth/whoami" "Authorization: Bearer $token"
# The audit commits of each credential run, from the broker's own metrics: how many records
# each commit carried and how much of the run the writer spent committing.
commits() { # base -> "count sum"
  curl -sf "$1/metrics" | awk '/^rise_audit_commit_duration_seconds_count/ {c=$2} /^rise_audit_commit_duration_seconds_sum/ {s=$2} END {print c+0, s+0}'
}
audited_run() { # name, server pid, base
  local before after
  before="$(commits "$3")"
  run "$1" "$2" "$3/registry/credentials?project=my-app" "Authorization: Bearer $token"
  after="$(commits "$3")"
  echo "$before $after" >"$work/$1.commits"
}
audited_run credentials-sqlite "$rise_pid" "$base"
audited_run credentials-postgres "$rise_pg_pid" "$pg_base"
run token-sqlite "$rise_pid" "$base/token?service=rise-registry&scope=repository:my-app:pull,push&account=rise" "Authorization: Basic $basic"
python3 - "$work" "$DURATION" <<'PY'
import sys, pathlib
d = pathlib.Path(sys.argv[1])
h = float((d / "healthz.rps").read_text())
for name in ("whoami", "credentials-sqlite", "credentials-postgres", "token-sqlite"):
    r = float((d / f"{name}.rps").read_text())
    print(f"ratio {name}/healthz = {r / h:.2f}")
# The commits counted span the warm-up second too: 1 + DURATION seconds at about the same rate.
duration = float(sys.argv[2])
for name in ("credentials-sqlite", "credentials-postgres"):
    c0, s0, c1, s1 = map(float, (d / f"{name}.commits").read_text().split())
    r = float((d / f"{name}.rps").read_text())
    commits, busy = max(c1 - c0, 1), s1 - s0
    print(f"audit {name.split('-')[1]}: {commits:.0f} commits, about {r * (duration + 1) / commits:.1f} records each,"
          f" {busy / commits * 1e6:.0f} us per commit, writer committing {busy / (duration + 1) * 100:.0f}% of the time")
PY
# Every issuance above was audited: count the records each store committed.
audited() { "$@" 2>/dev/null | grep -c '"operation":"credentials"' || true; }
echo "audit records committed: sqlite $(audited target/release/rise-backend audit export --config "$work/rise.toml"), postgres $(audited target/release/rise-backend audit export --config "$work/rise-pg.toml")"
