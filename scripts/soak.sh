#!/usr/bin/env bash
# The soak test of issue 7, one bounded command (not part of CI):
#
#   scripts/soak.sh                       # about 3 minutes
#   SOAK_SECONDS=60 USERS=50 scripts/soak.sh
#
# Builds the server and chat-bench in release, then starts on 127.0.0.1 only: its
# own redis-server, SecantusDB (MongoDB wire protocol, in memory), the fake LLM
# (CHUNKS deltas, LLM_DELAY_MS before each, so replies are in flight during
# restarts) and two server instances sharing Redis and MongoDB: a with
# SHUTDOWN_GRACE_SECONDS 10 (replies in flight finish), b with 0.1 (replies in flight
# are stopped, their partial text stored; SHUTDOWN_GRACES="A B"). `chat-bench soak`
# runs USERS users chatting through them for SOAK_SECONDS (each dropping its socket
# mid-reply every DROP_EVERY-th turn and resuming the reply on the other instance)
# while this script
# SIGTERMs one instance at a time every RESTART_MIN..RESTART_MAX seconds
# (alternating), waits for it to drain and exit (its exit code is recorded) and
# starts it again on the same port. At the end both instances are stopped the
# same way. Prints the client's JSON summary (plus a "script" object: restarts
# and exit codes) on stdout; exits non-zero if a message was lost or duplicated,
# the stored history is inconsistent, or an instance exited non-zero.
# Everything it started is killed on exit; logs are kept (path printed) on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SOAK_SECONDS=${SOAK_SECONDS:-180}
USERS=${USERS:-100}
THINK_MS=${THINK_MS:-300}
DROP_EVERY=${DROP_EVERY:-20}   # each user drops its socket mid-reply every N-th turn (0: never)
RESTART_MIN=${RESTART_MIN:-20}
RESTART_MAX=${RESTART_MAX:-30}
CHUNKS=${CHUNKS:-20}
CHUNK_BYTES=${CHUNK_BYTES:-16}
LLM_DELAY_MS=${LLM_DELAY_MS:-20}
SHUTDOWN_GRACES=${SHUTDOWN_GRACES:-"10 0.1"}   # per instance: a, b
SAMPLE_SECS=${SAMPLE_SECS:-5}
# RUST_LOG of the instances; startup=info logs how each drain ended (replies still not
# stored when the sockets closed: reported as drain_left; the instance then exits 1).
SERVER_LOG=${SERVER_LOG:-warn,llm_chat_server::startup=info}
KEEP_LOGS=${KEEP_LOGS:-0}         # 1: keep the temp dir (logs) even when the run passes

echo "==> building (release)" >&2
cargo build --release -q -p llm-chat-server -p chat-bench >&2
bin="$CARGO_TARGET_DIR/release"

command -v redis-server >/dev/null || { echo "redis-server is required (apt-get install redis-server)" >&2; exit 1; }

tmp=$(mktemp -d)
# pids (lib.sh): redis, mongo, fake LLM
inst_pid=()       # the current pid of each instance
soak_pid=
keep=$KEEP_LOGS
cleanup() {
  local status=$?
  [ "$status" = 0 ] || keep=1
  [ -n "$soak_pid" ] && kill "$soak_pid" 2>/dev/null || true
  kill_and_wait "${inst_pid[@]}" "${pids[@]}"
  if [ "$keep" = 1 ]; then echo "==> logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis
start_store
start_fake fake_url main --chunks "$CHUNKS" --chunk-bytes "$CHUNK_BYTES" --delay-ms "$LLM_DELAY_MS"

names=(a b)
read -r -a graces <<<"$SHUTDOWN_GRACES"
[ "${#graces[@]}" = 2 ] || { echo "SHUTDOWN_GRACES needs two values (a b)" >&2; exit 1; }
ports=("$(free_port)" "$(free_port)")
secret=$(head -c 36 /dev/urandom | base64)

# start_instance I: starts instance I on its port (again), writes its pid file, waits
# for its listening line and /readyz.
start_instance() {
  local i=$1 name=${names[$1]} port=${ports[$1]} try
  mkdir -p "$tmp/$name"
  touch "$tmp/$name.out"
  for try in 1 2 3 4 5; do
    local before
    before=$(grep -c 'llm-chat-server listening on ' "$tmp/$name.out" 2>/dev/null || true)
    (cd "$tmp/$name" && exec env LLM_PROVIDER=openai OPENAI_BASE_URL="$fake_url/v1" \
      LLM_MODEL=fake OPENAI_API_KEY=k REDIS_URL="$redis_url" \
      REDIS_PREFIX=soak MONGODB_URI="$store_uri" MONGODB_DB=soak \
      SECRET_KEY="$secret" HOST=127.0.0.1 PORT="$port" RATE_LIMIT_MESSAGES_PER_MINUTE=0 \
      RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR=0 RATE_LIMIT_MESSAGES_PER_IP_PER_MINUTE=0 \
      SHUTDOWN_GRACE_SECONDS="${graces[$i]}" SAVED_CONVERSATIONS_DIR="$tmp/$name/saved" \
      DATABASE_PATH="$tmp/$name/chat.db" RUST_LOG="$SERVER_LOG" "$bin/llm-chat-server" \
      >>"$tmp/$name.out" 2>>"$tmp/$name.err") &
    inst_pid[$i]=$!
    echo "${inst_pid[$i]}" >"$tmp/$name.pid"
    for _ in $(seq 1 300); do
      if [ "$(grep -c 'llm-chat-server listening on ' "$tmp/$name.out" 2>/dev/null || true)" -gt "$before" ]; then
        for _ in $(seq 1 100); do
          curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
          sleep 0.1
        done
        echo "instance $name is not ready:" >&2; curl -s "http://127.0.0.1:$port/readyz" >&2 || true
        return 1
      fi
      kill -0 "${inst_pid[$i]}" 2>/dev/null || break
      sleep 0.1
    done
    kill "${inst_pid[$i]}" 2>/dev/null || true
    wait "${inst_pid[$i]}" 2>/dev/null || true
    echo "instance $name did not start (try $try):" >&2
    tail -n 5 "$tmp/$name.err" >&2
    sleep 1
  done
  return 1
}

# stop_instance I: SIGTERM, wait for the drain and exit (SIGKILL after the server's own
# hard stop would have fired); sets rc to its exit code.
stop_instance() {
  local i=$1 pid=${inst_pid[$1]} waited=0 grace=${graces[$1]}
  local limit=$(((${grace%.*} + 21) * 10))
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    echo "instance ${names[$i]} (pid $pid) still running after $((limit / 10)) s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rc=0
  wait "$pid" || rc=$?
  stop_secs=$(awk "BEGIN { print $waited / 10 }")
}

# drain_left I: replies instance I's last drain left unstored: 0 after "drained; closing
# sockets", N after "drain: replies still not stored ... left=N", else null.
drain_left() {
  local line
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/${names[$1]}.err" \
    | grep -E 'drained; closing sockets|drain: replies still not stored' | tail -n 1)
  case $line in
    *"drained; closing sockets"*) echo 0 ;;
    *left=*) echo "$line" | sed -n 's/.*left=\([0-9]*\).*/\1/p' ;;
    *) echo null ;;
  esac
}

start_instance 0
start_instance 1
urls="http://127.0.0.1:${ports[0]},http://127.0.0.1:${ports[1]}"
echo "==> redis :$redis_port, SecantusDB :$store_port, fake LLM $fake_url (${CHUNKS} x ${LLM_DELAY_MS} ms)," \
  "instances $urls (shutdown grace ${graces[0]} s, ${graces[1]} s); $USERS users for $SOAK_SECONDS s, a restart every $RESTART_MIN-$RESTART_MAX s" >&2

"$bin/chat-bench" soak --urls "$urls" --pid-files "$tmp/a.pid,$tmp/b.pid" --users "$USERS" \
  --duration-secs "$SOAK_SECONDS" --think-ms "$THINK_MS" --sample-secs "$SAMPLE_SECS" \
  --drop-every "$DROP_EVERY" \
  --label "soak-2-instances-mongodb" >"$tmp/soak.json" &
soak_pid=$!

started=$SECONDS
restarts=0
codes=()
lefts=()
next=0
while kill -0 "$soak_pid" 2>/dev/null; do
  gap=$((RESTART_MIN + RANDOM % (RESTART_MAX - RESTART_MIN + 1)))
  for ((s = 0; s < gap; s++)); do
    kill -0 "$soak_pid" 2>/dev/null || break 2
    sleep 1
  done
  # No restart that would still be draining when the users stop.
  if [ $((SECONDS - started + 10)) -ge "$SOAK_SECONDS" ]; then
    continue
  fi
  i=$next
  next=$(((next + 1) % 2))
  old=${inst_pid[$i]}
  stop_instance "$i"
  codes+=("$rc")
  lefts+=("$(drain_left "$i")")
  restarts=$((restarts + 1))
  echo "soak.sh: $((SECONDS - started))s restart $restarts: instance ${names[$i]} (pid $old) drained" \
    "(replies left unfinished: ${lefts[-1]}) and exited $rc in ${stop_secs}s" >&2
  start_instance "$i"
done
soak_rc=0
wait "$soak_pid" || soak_rc=$?
soak_pid=

final=()
for i in 0 1; do
  stop_instance "$i"
  final+=("$rc")
  lefts+=("$(drain_left "$i")")
done
inst_pid=()

summary=$(cat "$tmp/soak.json")
join() { local IFS=,; echo "$*"; }
script="\"script\":{\"restarts\":$restarts,\"restart_exit_codes\":[$(join "${codes[@]}")],\"final_exit_codes\":[$(join "${final[@]}")],\"drain_left\":[$(join "${lefts[@]}")],\"soak_seconds\":$SOAK_SECONDS,\"llm_chunks\":$CHUNKS,\"llm_delay_ms\":$LLM_DELAY_MS,\"think_ms\":$THINK_MS,\"drop_every\":$DROP_EVERY,\"shutdown_grace_seconds\":[$(join "${graces[@]}")]}"
if [ -n "$summary" ]; then
  echo "${summary%\}},$script}"
else
  echo "{\"mode\":\"soak\",\"ok\":false,$script}"
fi

status=$soak_rc
for code in "${codes[@]}" "${final[@]}"; do
  [ "$code" = 0 ] || { echo "soak.sh: an instance exited with $code" >&2; status=1; }
done
for left in "${lefts[@]}"; do
  case $left in 0 | null) ;; *) echo "soak.sh: WARNING: an instance closed its sockets and exited with $left replies" \
    "still unfinished (drain_left; see turns.interrupted_not_stored)" >&2 ;; esac
done
if [ "$status" != 0 ]; then
  keep=1
  echo "soak.sh: FAILED" >&2
else
  echo "soak.sh: passed ($restarts restarts, every instance exited 0)" >&2
fi
exit "$status"
