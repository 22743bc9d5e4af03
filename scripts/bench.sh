#!/usr/bin/env bash
# The benchmark harness of issue 6, one command:
#
#   scripts/bench.sh
#
# Builds the server and chat-bench in release, starts on 127.0.0.1 a fake
# OpenAI-compatible LLM (CHUNKS deltas of CHUNK_BYTES bytes, LLM_DELAY_MS before
# each), the chat server on the embedded store (SQLite in a temp dir), and the
# transport reference (bare socketioxide), then runs, each bounded in time:
#   1. turns, USERS users, against the reference       (the transport ceiling)
#   2. turns, USERS users, against the server          (same run, for the ratio)
#      (1 and 2 again with short conversations: a new one every 10 turns)
#   3. turns, BIG_USERS users, against the server
#   4. turns, HISTORY_USERS users, a new conversation per turn vs HISTORY earlier messages
#   5. idle, IDLE_SOCKETS sockets, on a fresh reference, then a fresh server (RSS per socket)
# One JSON line per run on stdout (also appended to $RESULTS if set); everything
# it started is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DURATION=${DURATION:-12}
WARMUP=${WARMUP:-3}
USERS=${USERS:-100}
BIG_USERS=${BIG_USERS:-1000}
HISTORY=${HISTORY:-500}
HISTORY_USERS=${HISTORY_USERS:-1}
IDLE_SOCKETS=${IDLE_SOCKETS:-10000}
CHUNKS=${CHUNKS:-20}
CHUNK_BYTES=${CHUNK_BYTES:-16}
LLM_DELAY_MS=${LLM_DELAY_MS:-0}
ONLY=${ONLY:-all}   # all | turns | idle

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llm-chat-server/target}"
echo "==> building (release)" >&2
cargo build --release -q -p llm-chat-server -p chat-bench >&2
bin="$CARGO_TARGET_DIR/release"

# 10 000 sockets need 10 000+ descriptors in the server and in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "==> fd limit $(ulimit -n), load: $(uptime)" >&2

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# wait_url FILE PREFIX: the URL printed after PREFIX in FILE (10 s at most).
wait_url() {
  local file=$1 prefix=$2
  for _ in $(seq 1 200); do
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

"$bin/chat-bench" fake-llm --port 0 --chunks "$CHUNKS" --chunk-bytes "$CHUNK_BYTES" \
  --delay-ms "$LLM_DELAY_MS" >"$tmp/fake.out" 2>"$tmp/fake.out.err" &
pids+=($!)
fake_url=$(wait_url "$tmp/fake.out" "fake-llm listening on ")

# start_server NAME: starts a server with its own database; sets server_url, server_pid.
start_server() {
  local name=$1
  mkdir -p "$tmp/$name"
  (cd "$tmp/$name" && exec env LLM_PROVIDER=openai OPENAI_BASE_URL="$fake_url/v1" \
    LLM_MODEL=fake OPENAI_API_KEY=k RATE_LIMIT_MESSAGES_PER_MINUTE=0 \
    DATABASE_PATH="$tmp/$name/chat.db" SAVED_CONVERSATIONS_DIR="$tmp/$name/saved" \
    HOST=127.0.0.1 PORT=0 RUST_LOG=warn "$bin/llm-chat-server" \
    >"$tmp/$name.out" 2>"$tmp/$name.out.err") &
  server_pid=$!
  pids+=("$server_pid")
  server_url=$(wait_url "$tmp/$name.out" "llm-chat-server listening on ")
}

emit() {
  echo "$1"
  if [ -n "${RESULTS:-}" ]; then echo "$1" >>"$RESULTS"; fi
}

turns() { "$bin/chat-bench" turns --warmup-secs "$WARMUP" --duration-secs "$DURATION" \
  --llm-delay-ms "$LLM_DELAY_MS" "$@"; }

if [ "$ONLY" = all ] || [ "$ONLY" = turns ]; then
  start_server server
  "$bin/chat-bench" reference --port 0 --chunks "$CHUNKS" --chunk-bytes "$CHUNK_BYTES" \
    >"$tmp/reference.out" 2>"$tmp/reference.out.err" &
  ref_pid=$!
  pids+=("$ref_pid")
  ref_url=$(wait_url "$tmp/reference.out" "reference listening on ")
  echo "==> fake LLM $fake_url, server $server_url (pid $server_pid), reference $ref_url (pid $ref_pid)" >&2

  emit "$(turns --label reference --url "$ref_url" --users "$USERS" --server-pid "$ref_pid")"
  emit "$(turns --label server --url "$server_url" --users "$USERS" --server-pid "$server_pid")"
  # The same with conversations kept short (a new one, untimed, every 10 turns):
  # in the runs above each conversation grows by 2 messages per turn.
  emit "$(turns --label reference-short-conversations --url "$ref_url" --users "$USERS" --fresh-every 10 --server-pid "$ref_pid")"
  emit "$(turns --label server-short-conversations --url "$server_url" --users "$USERS" --fresh-every 10 --server-pid "$server_pid")"
  emit "$(turns --label server --url "$server_url" --users "$BIG_USERS" --server-pid "$server_pid" --source-addrs 4)"
  # Cost of a turn vs history length: few users so latency ~ cost; conversations are
  # replaced (untimed) so their length stays put: every turn in a new one, or every
  # 20 turns in one seeded with HISTORY messages (HISTORY..HISTORY+38).
  emit "$(turns --label server-new-conversation --url "$server_url" --users "$HISTORY_USERS" --history 0 --fresh-every 1 --server-pid "$server_pid")"
  emit "$(turns --label server-history --url "$server_url" --users "$HISTORY_USERS" --history "$HISTORY" --fresh-every 20 --server-pid "$server_pid")"
  kill "$ref_pid" "$server_pid" 2>/dev/null || true
fi

if [ "$ONLY" = all ] || [ "$ONLY" = idle ]; then
  "$bin/chat-bench" reference --port 0 --chunks "$CHUNKS" --chunk-bytes "$CHUNK_BYTES" \
    >"$tmp/reference-idle.out" 2>"$tmp/reference-idle.out.err" &
  ref_pid=$!
  pids+=("$ref_pid")
  ref_url=$(wait_url "$tmp/reference-idle.out" "reference listening on ")
  emit "$("$bin/chat-bench" idle --label reference --url "$ref_url" --sockets "$IDLE_SOCKETS" \
    --server-pid "$ref_pid" --source-addrs 8)"
  kill "$ref_pid" 2>/dev/null || true
  start_server idle
  emit "$("$bin/chat-bench" idle --label server --url "$server_url" --sockets "$IDLE_SOCKETS" \
    --server-pid "$server_pid" --source-addrs 8)"
fi
echo "==> done, load: $(uptime)" >&2
