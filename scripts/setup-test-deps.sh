#!/usr/bin/env bash
# Installs what Rise's integration tests (rise-backend/tests/it) run against:
#   - Debian packages: docker-registry (CNCF Distribution 2.8), skopeo, postgresql
#   - .test-deps/venv with moto[server] 5.x (moto_server)
#   - npm packages of rise-backend/tests/fixtures/oidc (oidc-provider 9.x)
# Idempotent; each step is skipped when its result is already there (a no-op run takes well under
# a second). Needs root for apt-get (or sudo when not root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.test-deps/venv"
OIDC_DIR="$ROOT/rise-backend/tests/fixtures/oidc"
MOTO_SPEC='moto[server]>=5.1,<5.3'

log() { printf '[setup-test-deps] %s\n' "$*" >&2; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

postgres_bindir() {
    # Debian's versioned install dir, newest version first (not /usr/local/bin wrappers).
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        if [[ -x "$dir/postgres" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------------
apt_missing=()
command -v docker-registry >/dev/null 2>&1 || apt_missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || apt_missing+=(skopeo)
postgres_bindir >/dev/null || apt_missing+=(postgresql)

if ((${#apt_missing[@]} > 0)); then
    log "installing Debian packages: ${apt_missing[*]}"
    # Another apt/dpkg run may hold the lock (e.g. a provisioning install): wait for it rather
    # than failing. DPkg::Lock::Timeout covers both the lists lock and the dpkg frontend lock.
    apt_opts=(-o DPkg::Lock::Timeout=900 -o Acquire::Retries=3)
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq \
        docker-registry skopeo postgresql >&2
fi

# The tests start their own postgres in a temp dir; the package's default cluster must not run
# (nor start at boot). Cheap, so done on every run.
if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver name _port status _rest; do
        [[ -n "${ver:-}" ]] || continue
        if [[ "$status" == online* ]]; then
            log "stopping system postgres cluster $ver/$name"
            "${SUDO[@]}" pg_ctlcluster "$ver" "$name" stop || true
        fi
        start_conf="/etc/postgresql/$ver/$name/start.conf"
        if [[ -f "$start_conf" ]] && ! grep -qx 'manual' "$start_conf"; then
            echo manual | "${SUDO[@]}" tee "$start_conf" >/dev/null
        fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
fi

for bin in docker-registry skopeo; do
    command -v "$bin" >/dev/null 2>&1 || { log "ERROR: $bin still missing after apt-get install"; exit 1; }
done
PG_BIN="$(postgres_bindir)" || { log "ERROR: no /usr/lib/postgresql/*/bin/postgres after apt-get install"; exit 1; }

# ---------------------------------------------------------------------------------------------
# 2. moto in a venv
# ---------------------------------------------------------------------------------------------
moto_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null
}

if [[ -x "$VENV/bin/moto_server" ]] && MOTO_VERSION="$(moto_version)"; then
    :
else
    log "creating $VENV with $MOTO_SPEC"
    PYTHON="${PYTHON:-$(command -v python3)}"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$MOTO_SPEC" >&2
    [[ -x "$VENV/bin/moto_server" ]] || { log "ERROR: $VENV/bin/moto_server missing after pip install"; exit 1; }
    MOTO_VERSION="$(moto_version)"
fi

# ---------------------------------------------------------------------------------------------
# 3. oidc-provider (npm)
# ---------------------------------------------------------------------------------------------
# oidc-provider 9 needs node >= 20.18 (it uses URL.parse); Debian 12's own nodejs (18) is too old.
command -v node >/dev/null 2>&1 || { log "ERROR: node (>= 20.18) is not installed"; exit 1; }
command -v npm >/dev/null 2>&1 || { log "ERROR: npm is not installed"; exit 1; }
read -r NODE_URL_PARSE NODE_VERSION < <(node -p 'typeof URL.parse + " " + process.version')
if [[ "$NODE_URL_PARSE" != function ]]; then
    log "ERROR: node $NODE_VERSION is too old for oidc-provider 9 (needs >= 20.18)"
    exit 1
fi

stamp="$OIDC_DIR/node_modules/.rise-installed"
lock_sum() { sha256sum "$OIDC_DIR/package.json" "$OIDC_DIR/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1; }

if [[ -f "$OIDC_DIR/package-lock.json" && -f "$stamp" && "$(cat "$stamp")" == "$(lock_sum)" ]]; then
    :
else
    log "installing npm packages in ${OIDC_DIR#"$ROOT"/}"
    if [[ -f "$OIDC_DIR/package-lock.json" ]]; then
        (cd "$OIDC_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
    else
        (cd "$OIDC_DIR" && npm install --no-audit --no-fund --loglevel=error >&2)
    fi
    lock_sum >"$stamp"
fi

# ---------------------------------------------------------------------------------------------
# Summary: one line per dependency.
# ---------------------------------------------------------------------------------------------
echo "docker-registry $(docker-registry --version | awk '{print $NF}')"
echo "skopeo $(skopeo --version | awk '{print $NF}')"
echo "postgres $("$PG_BIN/postgres" --version | awk '{print $3}') ($PG_BIN)"
echo "moto $MOTO_VERSION ($VENV/bin/moto_server)"
OIDC_VERSION="$(sed -n 's/^  "version": *"\([^"]*\)".*/\1/p' "$OIDC_DIR/node_modules/oidc-provider/package.json")"
echo "oidc-provider $OIDC_VERSION (node $NODE_VERSION)"
