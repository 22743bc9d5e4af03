#!/usr/bin/env bash
# The whole test suite, as a new user (and CI) runs it: installs what is
# missing (Node.js/npm, Debian's Chromium, redis-server and nginx, the npm
# test packages, SecantusDB in a virtualenv), then runs formatting and lint checks, the Rust unit tests,
# the store contract suite (SQLite and MongoDB protocol), the black-box API
# tests (on SQLite, then on MongoDB), and the Node checks (official
# socket.io-client, headless Chromium) against the binary.
#
#   scripts/test.sh            everything
#   SKIP_LINT=1 scripts/test.sh   skip fmt/clippy (quicker local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Builds are slow on small machines: keep them outside the clone so a fresh
# clone (CI) on the same machine reuses earlier work.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llm-chat-server/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n==> %s\n' "$*"; }
need_apt=()
command -v cargo >/dev/null || { echo "cargo is required: install Rust from rustup.rs" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The cluster tests start their own redis-server and nginx processes on
# loopback ports (never the machine's Redis): they need the binaries.
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} (Debian packages)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

step "SecantusDB (MongoDB wire protocol) for the MongoDB tests, from tests/requirements-mongo.txt"
venv="${SECANTUS_VENV:-$HOME/.cache/llm-chat-server/venv}"
if ! cmp -s tests/requirements-mongo.txt "$venv/.installed-requirements" 2>/dev/null \
   || [ ! -x "$venv/bin/secantusd-py" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    [ "$(id -u)" -ne 0 ] && SUDO=sudo || SUDO=
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements-mongo.txt
  cp tests/requirements-mongo.txt "$venv/.installed-requirements"
else
  echo "up to date"
fi
export SECANTUSD_BIN="$venv/bin/secantusd-py"

step "npm packages for the Node checks (tests/node, from package-lock.json)"
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.package-lock.json 2>/dev/null; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "up to date"
fi

if [ "${SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy --workspace --all-targets -- -D warnings (the server and the bench harness)"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

step "cargo build (the binary the Node checks run)"
cargo build --quiet
bin="$CARGO_TARGET_DIR/debug/llm-chat-server"

step "cargo test (unit tests, then black-box tests against the real binary)"
cargo test --quiet -- --color never

step "cargo test --test api again, with the MongoDB store (a SecantusDB server on loopback)"
mongo_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mongo_log=$(mktemp)
"$SECANTUSD_BIN" --host 127.0.0.1 --port "$mongo_port" --storage-path :memory: --log-level WARNING >"$mongo_log" 2>&1 &
mongo_pid=$!
trap 'kill -9 "$mongo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$mongo_port") 2>/dev/null && break
  kill -0 "$mongo_pid" 2>/dev/null || { cat "$mongo_log" >&2; echo "SecantusDB did not start" >&2; exit 1; }
  sleep 0.2
done
TEST_MONGODB_URI="mongodb://127.0.0.1:$mongo_port" cargo test --quiet --test api -- --color never
kill -9 "$mongo_pid" 2>/dev/null || true

step "node --test tests/node (official socket.io-client, headless Chromium)"
CHAT_SERVER_BIN="$bin" SCREENSHOT_DIR="$root/target/screenshots" \
  node --test --test-concurrency=1 tests/node/

step "all tests passed"
