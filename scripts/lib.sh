# Shell helpers shared by scripts/bench.sh, scripts/soak.sh and scripts/test.sh:
#
#   source "$(dirname "$0")/lib.sh"
#
# after `cd` to the repository root (paths like tests/requirements-mongo.txt are relative
# to it). Helpers that start a process append its pid to the array `pids` (the caller's
# cleanup ends them) and write its output under "$tmp" (the caller's temp dir); those
# that run chat-bench take it from "$bin".

# Builds are slow on small machines: keep them outside the clone so a fresh clone (CI) on
# the same machine reuses earlier work.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llm-chat-server/target}"

# Where SecantusDB (a MongoDB wire-protocol server, for the MongoDB store) is installed,
# from tests/requirements-mongo.txt.
SECANTUS_VENV="${SECANTUS_VENV:-$HOME/.cache/llm-chat-server/venv}"
SECANTUSD_BIN="$SECANTUS_VENV/bin/secantusd-py"

pids=()

# as_root CMD...: CMD as root (through sudo when not root already).
as_root() {
  if [ "$(id -u)" -ne 0 ]; then sudo "$@"; else "$@"; fi
}

# apt_install PACKAGE...: Debian packages, quietly.
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# secantus_installed: whether SecantusDB is installed from the current requirements.
secantus_installed() {
  cmp -s tests/requirements-mongo.txt "$SECANTUS_VENV/.installed-requirements" 2>/dev/null \
    && [ -x "$SECANTUSD_BIN" ]
}

# ensure_secantus: installs SecantusDB into $SECANTUS_VENV unless it is up to date.
ensure_secantus() {
  secantus_installed && return 0
  echo "==> installing SecantusDB into $SECANTUS_VENV (tests/requirements-mongo.txt)" >&2
  python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
  python3 -m venv "$SECANTUS_VENV"
  "$SECANTUS_VENV/bin/pip" install --quiet --disable-pip-version-check \
    -r tests/requirements-mongo.txt >&2
  cp tests/requirements-mongo.txt "$SECANTUS_VENV/.installed-requirements"
}

# free_port: a free TCP port on 127.0.0.1 (bound, then released).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# port_open PORT: whether something accepts connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_port PORT PID LOG: until 127.0.0.1:PORT accepts (60 s at most, or PID dies; then
# LOG is shown).
wait_port() {
  local port=$1 pid=$2 log=$3
  for _ in $(seq 1 300); do
    if port_open "$port"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited before listening on $port:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "nothing listens on 127.0.0.1:$port after 60 s:" >&2
  cat "$log" >&2
  return 1
}

# wait_url FILE PREFIX [SECONDS]: the URL printed after PREFIX in FILE (10 s at most, or
# SECONDS).
wait_url() {
  local file=$1 prefix=$2 line
  for _ in $(seq 1 $((${3:-10} * 20))); do
    if line=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then
      echo "${line#"$prefix"}"
      return 0
    fi
    sleep 0.05
  done
  echo "timed out waiting for '$prefix' in $file:" >&2
  cat "$file" "$file.err" >&2 2>/dev/null || true
  return 1
}

# kill_and_wait PID...: ends processes this script started, and waits for them.
kill_and_wait() {
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# start_redis: a redis-server of this run on a free loopback port, no persistence;
# sets redis_port, redis_url, redis_pid.
start_redis() {
  redis_port=$(free_port)
  mkdir -p "$tmp/redis-$redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --dir "$tmp/redis-$redis_port" >"$tmp/redis-$redis_port.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis_port" "$redis_pid" "$tmp/redis-$redis_port.log"
  redis_url="redis://127.0.0.1:$redis_port/0"
}

# start_store: SecantusDB (MongoDB wire protocol, in memory) on a free loopback port,
# installed first if needed; sets store_port, store_uri, store_pid.
start_store() {
  ensure_secantus
  store_port=$(free_port)
  "$SECANTUSD_BIN" --host 127.0.0.1 --port "$store_port" --storage-path :memory: \
    --log-level WARNING >"$tmp/store-$store_port.log" 2>&1 &
  store_pid=$!
  pids+=("$store_pid")
  wait_port "$store_port" "$store_pid" "$tmp/store-$store_port.log"
  store_uri="mongodb://127.0.0.1:$store_port"
}

# start_fake VAR NAME ARGS...: `chat-bench fake-llm --port 0 ARGS` (output in
# $tmp/fake-NAME.out); sets VAR to its URL.
start_fake() {
  local var=$1 name=$2 url
  shift 2
  "$bin/chat-bench" fake-llm --port 0 "$@" \
    >"$tmp/fake-$name.out" 2>"$tmp/fake-$name.out.err" &
  pids+=($!)
  url=$(wait_url "$tmp/fake-$name.out" "fake-llm listening on ")
  printf -v "$var" '%s' "$url"
}
