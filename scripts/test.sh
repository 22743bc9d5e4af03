#!/usr/bin/env bash
# The whole test suite, as a new user (and CI) runs it: installs what is
# missing (Node.js/npm, Debian's Chromium, redis-server and nginx, the npm
# test packages, SecantusDB in a virtualenv), then checks that the committed
# front-end bundle (static/vendor/) is what static/package-lock.json builds,
# runs formatting and lint checks, the Rust unit tests,
# the store contract suite (SQLite and MongoDB protocol), the black-box API
# tests (on SQLite, then on MongoDB), and the Node checks (official
# socket.io-client, headless Chromium) against the binary.
#
#   scripts/test.sh            everything
#   SKIP_LINT=1 scripts/test.sh   skip fmt/clippy (quicker local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source scripts/lib.sh   # CARGO_TARGET_DIR (outside the clone), SecantusDB, ports, processes

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
  apt_install "${need_apt[@]}"
fi

step "SecantusDB (MongoDB wire protocol) for the MongoDB tests, from tests/requirements-mongo.txt"
if secantus_installed; then echo "up to date"; else ensure_secantus; fi
export SECANTUSD_BIN

step "npm packages for the Node checks (tests/node, from package-lock.json)"
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.package-lock.json 2>/dev/null; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "up to date"
fi

step "front-end bundle: static/vendor/ rebuilt from static/package-lock.json must match the committed one"
scripts/vendor.sh --check

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

step "cargo test -p chat-bench (the benchmark harness's own unit tests)"
cargo test --quiet -p chat-bench -- --color never

step "cargo test --test api again, with the MongoDB store (a SecantusDB server on loopback)"
tmp=$(mktemp -d)
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
start_store
TEST_MONGODB_URI="$store_uri" cargo test --quiet --test api -- --color never
kill -9 "$store_pid" 2>/dev/null || true
wait "$store_pid" 2>/dev/null || true   # reaped here: no "Killed" notice later

step "node --test tests/node (official socket.io-client, headless Chromium)"
CHAT_SERVER_BIN="$bin" SCREENSHOT_DIR="$root/target/screenshots" \
  node --test --test-concurrency=1 tests/node/

step "all tests passed"
