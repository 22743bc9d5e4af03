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
#  1b. turns, USERS users, against the proxy reference (bare socketioxide streaming each
#      reply from the fake LLM with reqwest, sending the conversation so far as the server
#      does: the least a chat server must do per turn), then against the same proxy
#      sending only the new message (`--history one-message`, the proxy of sessions 8-10)
#   2. turns, USERS users, against the server          (same run, for both ratios)
#      (1, the proxy and 2 again with short conversations: a new one every 10 turns; the
#      proxy and 2 again with a new one every LONG_EVERY turns. In the runs above each
#      conversation grows for the whole run, so a faster server sends longer histories:
#      these two pairs compare the proxy and the server at equal conversation lengths)
#   3. turns, BIG_USERS users, against the server
#   4. turns, HISTORY_USERS users, a new conversation per turn vs HISTORY earlier messages
#   5. idle, IDLE_SOCKETS sockets, on a fresh reference, then a fresh server (RSS per socket)
#   6. fanout (ONLY=fanout): one conversation, W watching sockets of the same user, for
#      each W in FANOUT_WATCHERS, on a fresh embedded server
#   7. cross (ONLY=cross): two instances sharing a redis-server and a SecantusDB (MongoDB
#      protocol) of their own (CROSS_STORE=sqlite: one SQLite file instead), for each N in
#      CROSS_CONVERSATIONS, N conversations streaming at once (fake LLM with
#      CROSS_LLM_DELAY_MS per delta), senders on A, a watcher each on B
#   8. upload (ONLY=upload): one UPLOAD_BYTES text file through POST /upload_file, fake LLM
#      answering each chunk's analysis after UPLOAD_LLM_DELAY_MS, on a server with
#      UPLOAD_CONCURRENCY=1, then one with 4 (the default)
#  8b. chunking (ONLY=chunking): the same UPLOAD_BYTES of text uploaded with its newlines,
#      then on one line (newlines made spaces), fake LLM answering at once: the
#      `chunking_secs` of each, and their ratio (one line / newlines; target within 2)
#   9. redis (ONLY=redis): turns (USERS users, then short conversations) against a server
#      with REDIS_URL and MONGODB_URI (its own redis-server and SecantusDB)
#  10. scale (ONLY=scale): for each N in SCALE_INSTANCES, N instances sharing a fresh
#      redis-server and one SQLite file, behind Debian's nginx with deploy/nginx.conf
#      (upstream servers and listen replaced, NGINX_WORKERS worker processes); turns with
#      USERS users through nginx, spread over SCALE_SOURCE_NETS loopback /24s (ip_hash
#      keys on the first three octets), CPU of each instance, nginx and Redis
#  11. instructions (ONLY=instructions, not part of `all`): the server under valgrind's
#      callgrind, INSTR_USERS users, a new conversation every 10 turns, then every
#      LONG_EVERY turns: the instructions the server executes per turn while the load
#      generator measures; then the proxy reference the same way, and their ratio. Unlike
#      turns/s and CPU time, that count does not move with whatever else the machine runs:
#      it is the figure for an A/B of a small change (BENCH_BIN=<before>, then <after>).
#      It leaves out the kernel's work (sockets, file writes). Needs valgrind (Debian's
#      package).
# One JSON line per run on stdout (also appended to $RESULTS if set); everything
# it started is killed on exit. SecantusDB comes from the virtualenv scripts/test.sh
# makes ($HOME/.cache/llm-chat-server/venv, created here from
# tests/requirements-mongo.txt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source scripts/lib.sh

DURATION=${DURATION:-12}
WARMUP=${WARMUP:-3}
USERS=${USERS:-100}
BIG_USERS=${BIG_USERS:-1000}
HISTORY=${HISTORY:-500}
HISTORY_USERS=${HISTORY_USERS:-1}
LONG_EVERY=${LONG_EVERY:-100}
IDLE_SOCKETS=${IDLE_SOCKETS:-10000}
CHUNKS=${CHUNKS:-20}
CHUNK_BYTES=${CHUNK_BYTES:-16}
LLM_DELAY_MS=${LLM_DELAY_MS:-0}
FANOUT_WATCHERS=${FANOUT_WATCHERS:-10 100 1000}
CROSS_CONVERSATIONS=${CROSS_CONVERSATIONS:-100}
CROSS_LLM_DELAY_MS=${CROSS_LLM_DELAY_MS:-10}
CROSS_STORE=${CROSS_STORE:-mongo}   # mongo (SecantusDB) | sqlite (one file shared by A and B)
UPLOAD_BYTES=${UPLOAD_BYTES:-5000000}
UPLOAD_LLM_DELAY_MS=${UPLOAD_LLM_DELAY_MS:-50}
SCALE_INSTANCES=${SCALE_INSTANCES:-1 2 4}
SCALE_SOURCE_NETS=${SCALE_SOURCE_NETS:-16}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
# SCALE_SQLITE=separate gives each scale instance a SQLite file of its own (a diagnosis of
# the shared file's write lock, not a deployment: it works only because ip_hash pins each
# user's requests and socket to one instance).
SCALE_SQLITE=${SCALE_SQLITE:-shared}
INSTR_USERS=${INSTR_USERS:-20}
INSTR_WARMUP=${INSTR_WARMUP:-20}
INSTR_DURATION=${INSTR_DURATION:-40}
ONLY=${ONLY:-all}   # all | turns | idle | fanout | cross | upload | chunking | redis | scale | instructions
# KEEP_LOGS=1 keeps the temp dir with every process's output (its path is printed).
# BENCH_BIN=DIR uses the binaries in DIR instead of building (A/B against a kept build).

if [ -n "${BENCH_BIN:-}" ]; then
  # BENCH_BIN=DIR: run the llm-chat-server and chat-bench found in DIR (say, an earlier
  # build kept for an A/B comparison) instead of building the checkout.
  bin=$BENCH_BIN
  echo "==> using the binaries in $bin" >&2
else
  echo "==> building (release)" >&2
  cargo build --release -q -p llm-chat-server -p chat-bench >&2
  bin="$CARGO_TARGET_DIR/release"
fi

# 10 000 sockets need 10 000+ descriptors in the server and in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "==> fd limit $(ulimit -n), load: $(uptime)" >&2

tmp=$(mktemp -d)
cleanup() {
  kill_and_wait "${pids[@]}"
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "==> logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# fake NAME VAR ARGS...: a fake LLM (CHUNKS deltas of CHUNK_BYTES) with these delays;
# sets VAR to its URL.
fake() {
  local name=$1 var=$2
  shift 2
  start_fake "$var" "$name" --chunks "$CHUNKS" --chunk-bytes "$CHUNK_BYTES" "$@"
}
fake main fake_url --delay-ms "$LLM_DELAY_MS"

# start_server NAME [VAR=value...] [WRAPPER ARGS...]: starts a server with its own database
# (the extra variables come last, so they override; a command after them, such as
# valgrind, runs the server); waits SERVER_START_SECS (10) for it; sets server_url,
# server_pid.
start_server() {
  local name=$1
  shift
  mkdir -p "$tmp/$name"
  (cd "$tmp/$name" && exec env LLM_PROVIDER=openai OPENAI_BASE_URL="$fake_url/v1" \
    LLM_MODEL=fake OPENAI_API_KEY=k RATE_LIMIT_MESSAGES_PER_MINUTE=0 \
    RATE_LIMIT_NEW_SESSIONS_PER_IP_PER_HOUR=0 RATE_LIMIT_MESSAGES_PER_IP_PER_MINUTE=0 \
    DATABASE_PATH="$tmp/$name/chat.db" SAVED_CONVERSATIONS_DIR="$tmp/$name/saved" \
    HOST=127.0.0.1 PORT=0 RUST_LOG=warn "$@" "$bin/llm-chat-server" \
    >"$tmp/$name.out" 2>"$tmp/$name.out.err") &
  server_pid=$!
  pids+=("$server_pid")
  server_url=$(wait_url "$tmp/$name.out" "llm-chat-server listening on " "${SERVER_START_SECS:-10}")
}

# wait_ready URL: until URL/readyz answers 200 (Redis subscribed, store up; 30 s at most).
wait_ready() {
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null --max-time 2 "$1/readyz" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$1/readyz not ready after 30 s:" >&2
  curl -sS --max-time 2 "$1/readyz" >&2 || true
  return 1
}

# cpu_secs PID: utime+stime of PID in seconds (for processes chat-bench does not sample).
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo "?"
}

# The same SECRET_KEY on every instance (it signs the session cookie; >= 32 characters).
secret="bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }
# bounded SECS CMD...: a chat-bench run that cannot hang the script.
bounded() { local secs=$1; shift; timeout -k 5 "$secs" "$@"; }
measured=$((WARMUP + DURATION))

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

  # The proxy reference: bare socketioxide streaming each reply from the same fake LLM,
  # sending each conversation's history; and one sending only the new message.
  "$bin/chat-bench" reference --port 0 --llm-url "$fake_url" \
    >"$tmp/proxy.out" 2>"$tmp/proxy.out.err" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  proxy_url=$(wait_url "$tmp/proxy.out" "reference listening on ")
  "$bin/chat-bench" reference --port 0 --llm-url "$fake_url" --history one-message \
    >"$tmp/proxy1.out" 2>"$tmp/proxy1.out.err" &
  proxy1_pid=$!
  pids+=("$proxy1_pid")
  proxy1_url=$(wait_url "$tmp/proxy1.out" "reference listening on ")

  reference_line=$(turns --label reference --url "$ref_url" --users "$USERS" --server-pid "$ref_pid")
  emit "$reference_line"
  proxy_line=$(turns --label proxy-reference --url "$proxy_url" --users "$USERS" --server-pid "$proxy_pid")
  emit "$proxy_line"
  proxy1_line=$(turns --label proxy-reference-one-message --url "$proxy1_url" --users "$USERS" --server-pid "$proxy1_pid")
  emit "$proxy1_line"
  server_line=$(turns --label server --url "$server_url" --users "$USERS" --server-pid "$server_pid")
  emit "$server_line"
  tps() { sed -n 's/.*"turns_per_sec":\([0-9.]*\).*/\1/p' <<<"$1"; }
  ratio() { awk -v a="$(tps "$1")" -v b="$(tps "$2")" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
  echo "==> turns/s at $USERS users: server $(tps "$server_line"), transport reference $(tps "$reference_line") (ratio $(ratio "$server_line" "$reference_line")), proxy reference $(tps "$proxy_line") (ratio $(ratio "$server_line" "$proxy_line")), one-message proxy $(tps "$proxy1_line") (ratio $(ratio "$server_line" "$proxy1_line"))" >&2
  # The same with conversations kept short (a new one, untimed, every 10 turns):
  # in the runs above each conversation grows by 2 messages per turn.
  emit "$(turns --label reference-short-conversations --url "$ref_url" --users "$USERS" --fresh-every 10 --server-pid "$ref_pid")"
  proxy_short_line=$(turns --label proxy-reference-short-conversations --url "$proxy_url" --users "$USERS" --fresh-every 10 --server-pid "$proxy_pid")
  emit "$proxy_short_line"
  server_short_line=$(turns --label server-short-conversations --url "$server_url" --users "$USERS" --fresh-every 10 --server-pid "$server_pid")
  emit "$server_short_line"
  proxy_long_line=$(turns --label proxy-reference-long-conversations --url "$proxy_url" --users "$USERS" --fresh-every "$LONG_EVERY" --server-pid "$proxy_pid")
  emit "$proxy_long_line"
  server_long_line=$(turns --label server-long-conversations --url "$server_url" --users "$USERS" --fresh-every "$LONG_EVERY" --server-pid "$server_pid")
  emit "$server_long_line"
  echo "==> equal conversation lengths: server / proxy reference $(ratio "$server_short_line" "$proxy_short_line") (a new conversation every 10 turns), $(ratio "$server_long_line" "$proxy_long_line") (every $LONG_EVERY turns)" >&2
  emit "$(turns --label server --url "$server_url" --users "$BIG_USERS" --server-pid "$server_pid" --source-addrs 4)"
  # Cost of a turn vs history length: few users so latency ~ cost; conversations are
  # replaced (untimed) so their length stays put: every turn in a new one, or every
  # 20 turns in one seeded with HISTORY messages (HISTORY..HISTORY+38).
  emit "$(turns --label server-new-conversation --url "$server_url" --users "$HISTORY_USERS" --history 0 --fresh-every 1 --server-pid "$server_pid")"
  emit "$(turns --label server-history --url "$server_url" --users "$HISTORY_USERS" --history "$HISTORY" --fresh-every 20 --server-pid "$server_pid")"
  kill "$ref_pid" "$proxy_pid" "$proxy1_pid" "$server_pid" 2>/dev/null || true
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
  kill_and_wait "$server_pid"
fi

if want fanout; then
  # One user, one conversation, W more sockets (same cookie) watching it.
  start_server fanout
  echo "==> fan-out: server $server_url (pid $server_pid), watchers: $FANOUT_WATCHERS" >&2
  for watchers in $FANOUT_WATCHERS; do
    emit "$(bounded $((measured + 240)) "$bin/chat-bench" fanout --label server \
      --url "$server_url" --watchers "$watchers" --warmup-secs "$WARMUP" \
      --duration-secs "$DURATION" --server-pid "$server_pid")"
  done
  kill_and_wait "$server_pid"
fi

if want cross; then
  # Two instances, one Redis, one MongoDB-protocol store; senders on A, watchers on B.
  fake cross extra_fake_url --delay-ms "$CROSS_LLM_DELAY_MS"
  for conversations in $CROSS_CONVERSATIONS; do
    # Fresh instances, Redis and store for each run.
    start_redis
    cpu_pids="redis=$redis_pid"
    if [ "$CROSS_STORE" = sqlite ]; then
      mkdir -p "$tmp/cross-shared-$conversations"
      store=(DATABASE_PATH="$tmp/cross-shared-$conversations/chat.db")
      store_pid=""
    else
      start_store
      store=(MONGODB_URI="$store_uri" MONGODB_DB=bench_cross)
      cpu_pids="$cpu_pids,store=$store_pid"
    fi
    cluster=(OPENAI_BASE_URL="$extra_fake_url/v1" REDIS_URL="$redis_url" REDIS_PREFIX=benchx
      SECRET_KEY="$secret" "${store[@]}")
    start_server "cross-a-$conversations" "${cluster[@]}"
    a_url=$server_url a_pid=$server_pid
    start_server "cross-b-$conversations" "${cluster[@]}"
    b_url=$server_url b_pid=$server_pid
    wait_ready "$a_url"
    wait_ready "$b_url"
    echo "==> cross-instance, $conversations conversations: A $a_url (pid $a_pid), B $b_url (pid $b_pid), redis $redis_url (pid $redis_pid), store $CROSS_STORE ${store_pid:+(pid $store_pid)}, fake LLM delay $CROSS_LLM_DELAY_MS ms" >&2
    emit "$(bounded $((measured + 240)) "$bin/chat-bench" cross --label "redis-$CROSS_STORE" \
      --url-a "$a_url" --url-b "$b_url" --conversations "$conversations" \
      --llm-delay-ms "$CROSS_LLM_DELAY_MS" --warmup-secs "$WARMUP" --duration-secs "$DURATION" \
      --server-pid "$a_pid" --cpu-pids "b=$b_pid,$cpu_pids")"
    # Reply events the instances' subscribers dropped (a lagging broadcast channel).
    for side in a b; do
      sed 's/\x1b\[[0-9;]*m//g' "$tmp/cross-$side-$conversations.out.err" \
        | awk -v side="$side" '/came faster than delivered/ { n++; if (match($0, /missed=[0-9]+/)) m += substr($0, RSTART + 7, RLENGTH - 7) }
            END { printf "==> instance %s: %d \"reply events came faster than delivered\" warnings, %d events dropped\n", side, n, m }' >&2
    done
    kill_and_wait "$a_pid" "$b_pid" "$redis_pid" ${store_pid:+"$store_pid"}
  done
fi

if want upload; then
  # One file; each chunk's analysis answered after UPLOAD_LLM_DELAY_MS. Sequential first,
  # its wall time is the baseline of the concurrent run's ratio.
  fake upload extra_fake_url --complete-delay-ms "$UPLOAD_LLM_DELAY_MS"
  upload_env=(OPENAI_BASE_URL="$extra_fake_url/v1" RATE_LIMIT_UPLOADS_PER_HOUR=0
    RATE_LIMIT_UPLOADS_PER_IP_PER_HOUR=0
    MAX_FILE_SIZE_MB=$((UPLOAD_BYTES / 1048576 + 2)))
  baseline=""
  for concurrency in 1 4; do
    start_server "upload-$concurrency" "${upload_env[@]}" UPLOAD_CONCURRENCY="$concurrency"
    echo "==> upload: $UPLOAD_BYTES bytes, UPLOAD_CONCURRENCY=$concurrency, server $server_url (pid $server_pid)" >&2
    label=$([ "$concurrency" = 1 ] && echo sequential || echo concurrent-default)
    line=$(bounded 900 "$bin/chat-bench" upload --label "$label" --url "$server_url" \
      --file-bytes "$UPLOAD_BYTES" --concurrency "$concurrency" \
      --llm-delay-ms "$UPLOAD_LLM_DELAY_MS" --server-pid "$server_pid" \
      ${baseline:+--baseline-secs "$baseline"})
    emit "$line"
    [ -n "$baseline" ] || baseline=$(sed -n 's/.*"wall_secs":\([0-9.]*\).*/\1/p' <<<"$line")
    kill_and_wait "$server_pid"
  done
fi

if want chunking; then
  fake chunking extra_fake_url
  start_server chunking OPENAI_BASE_URL="$extra_fake_url/v1" RATE_LIMIT_UPLOADS_PER_HOUR=0 \
    MAX_FILE_SIZE_MB=$((UPLOAD_BYTES / 1048576 + 2))
  newline_secs=""
  for one_line in no yes; do
    echo "==> chunking: $UPLOAD_BYTES bytes, one line: $one_line, server $server_url (pid $server_pid)" >&2
    line=$(bounded 900 "$bin/chat-bench" upload --label "chunking-one-line-$one_line" \
      --url "$server_url" --file-bytes "$UPLOAD_BYTES" --one-line "$one_line" \
      --server-pid "$server_pid")
    emit "$line"
    secs=$(sed -n 's/.*"chunking_secs":\([0-9.]*\).*/\1/p' <<<"$line")
    if [ -z "$newline_secs" ]; then newline_secs=$secs; else
      echo "==> chunking: one line ${secs}s vs newlines ${newline_secs}s, ratio $(awk -v a="$secs" -v b="$newline_secs" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')" >&2
    fi
  done
  kill_and_wait "$server_pid"
fi

if want redis; then
  # The turns mode against a server on Redis (sessions, fan-out, reply logs) and the
  # MongoDB protocol (SecantusDB) instead of SQLite; REDIS_STORE=sqlite keeps the
  # embedded store (Redis's own cost, without SecantusDB's).
  start_redis
  if [ "${REDIS_STORE:-mongo}" = sqlite ]; then
    store_pid="" kind=redis-sqlite
    start_server redis-sqlite REDIS_URL="$redis_url" REDIS_PREFIX=bencht SECRET_KEY="$secret"
  else
    start_store
    kind=redis-mongo
    start_server redis-mongo REDIS_URL="$redis_url" REDIS_PREFIX=bencht SECRET_KEY="$secret" \
      MONGODB_URI="$store_uri" MONGODB_DB=bench_turns
  fi
  wait_ready "$server_url"
  echo "==> $kind: server $server_url (pid $server_pid), redis pid $redis_pid, store pid ${store_pid:-none}" >&2
  for fresh in 0 10; do
    label=$([ "$fresh" = 0 ] && echo "server-$kind" || echo "server-$kind-short-conversations")
    r0=$(cpu_secs "$redis_pid") s0=$([ -n "$store_pid" ] && cpu_secs "$store_pid" || echo -)
    emit "$(bounded $((measured + 240)) "$bin/chat-bench" turns --warmup-secs "$WARMUP" \
      --duration-secs "$DURATION" --llm-delay-ms "$LLM_DELAY_MS" --label "$label" \
      --url "$server_url" --users "$USERS" --fresh-every "$fresh" --server-pid "$server_pid")"
    echo "==> $label: CPU seconds during the run (warm-up included): redis $r0 -> $(cpu_secs "$redis_pid"), store $s0 -> $([ -n "$store_pid" ] && cpu_secs "$store_pid" || echo -)" >&2
  done
  kill_and_wait "$server_pid" "$redis_pid" ${store_pid:+"$store_pid"}
fi
# start_nginx NAME UPSTREAM...: Debian's nginx in front of UPSTREAM (host:port each) with
# deploy/nginx.conf, adapted as the tests do (tests/node/services.mjs startNginx): its
# upstream servers replaced, its listen address a free loopback port, a temp dir for pid,
# logs and temp files, no daemon; plus an access log naming the upstream of each request.
# Sets nginx_url, nginx_pid, nginx_dir.
start_nginx() {
  local name=$1 port
  shift
  port=$(free_port)
  nginx_dir="$tmp/$name"
  mkdir -p "$nginx_dir"
  chmod 755 "$nginx_dir" # the workers (nobody, when started as root) write temp files here
  {
    echo "daemon off;"
    echo "master_process on;"
    echo "worker_processes $NGINX_WORKERS;"
    echo "pid $nginx_dir/nginx.pid;"
    echo "error_log $nginx_dir/error.log warn;"
    echo "events { worker_connections 16384; }"
    echo "http {"
    echo "log_format upstreams '\$remote_addr \$upstream_addr \$status \$request_uri';"
    echo "access_log $nginx_dir/access.log upstreams;"
    for temp in client_body proxy fastcgi uwsgi scgi; do
      echo "${temp}_temp_path $nginx_dir/$temp;"
    done
    awk -v upstreams="$*" -v listen="127.0.0.1:$port" '
      { code = $0; sub(/#.*/, "", code); gsub(/^[ \t]+|[ \t]+$/, "", code) }
      code ~ /^upstream .*\{$/ { inside = 1; blocks++; print; next }
      inside && code == "}" {
        n = split(upstreams, list, " ")
        for (i = 1; i <= n; i++) print "    server " list[i] ";"
        inside = 0; print; next
      }
      inside && code ~ /^server / { next }
      inside && code == "ip_hash;" { hashed = 1 }
      code ~ /^listen / { if (!listens++) print "    listen " listen ";"; next }
      { print }
      END {
        if (blocks != 1) { print "deploy/nginx.conf: " blocks " upstream blocks, want 1" > "/dev/stderr"; exit 1 }
        if (!hashed) { print "deploy/nginx.conf: no ip_hash in its upstream" > "/dev/stderr"; exit 1 }
      }' deploy/nginx.conf
    echo "}"
  } >"$nginx_dir/nginx.conf"
  /usr/sbin/nginx -p "$nginx_dir" -e "$nginx_dir/error.log" -c "$nginx_dir/nginx.conf" \
    >"$nginx_dir/nginx.out" 2>&1 &
  nginx_pid=$!
  pids+=("$nginx_pid")
  wait_port "$port" "$nginx_pid" "$nginx_dir/error.log"
  nginx_url="http://127.0.0.1:$port"
}

# nginx_workers PID: the worker processes of the nginx master PID, one per line.
nginx_workers() {
  tr -s ' ' '\n' <"/proc/$1/task/$1/children" | grep -v '^$' || true
}

if want scale; then
  # Issue 16's scaling table: N instances behind nginx, sharing Redis and one SQLite file.
  [ -x /usr/sbin/nginx ] || { echo "/usr/sbin/nginx is missing: apt-get install nginx" >&2; exit 1; }
  for instances in $SCALE_INSTANCES; do
    start_redis
    mkdir -p "$tmp/scale-shared-$instances"
    cluster=(REDIS_URL="$redis_url" REDIS_PREFIX="bench-scale-$instances" SECRET_KEY="$secret"
      DATABASE_PATH="$tmp/scale-shared-$instances/chat.db")
    upstreams=() app_pids=() cpu_pids="" names=()
    for i in $(seq 1 "$instances"); do
      if [ "$SCALE_SQLITE" = separate ]; then
        # start_server's own DATABASE_PATH (one per instance) stays.
        start_server "scale-$instances-app$i" "${cluster[@]:0:3}"
      else
        start_server "scale-$instances-app$i" "${cluster[@]}"
      fi
      wait_ready "$server_url"
      upstreams+=("${server_url#http://}")
      app_pids+=("$server_pid")
      names+=("app$i=${server_url#http://}")
      cpu_pids="$cpu_pids${cpu_pids:+,}app$i=$server_pid"
    done
    start_nginx "scale-$instances-nginx" "${upstreams[@]}"
    # Workers are forked before the port is bound; give them a moment to show up.
    workers=()
    for _ in $(seq 1 50); do
      mapfile -t workers < <(nginx_workers "$nginx_pid")
      [ "${#workers[@]}" -gt 0 ] && break
      sleep 0.1
    done
    cpu_pids="$cpu_pids,nginx=$nginx_pid"
    for w in "${workers[@]}"; do cpu_pids="$cpu_pids,nginx=$w"; done
    cpu_pids="$cpu_pids,redis=$redis_pid"
    echo "==> scale: $instances instance(s) (${names[*]}, pids ${app_pids[*]}), nginx $nginx_url (pid $nginx_pid, ${#workers[@]} workers), redis pid $redis_pid, $USERS users from $SCALE_SOURCE_NETS /24s, load: $(uptime)" >&2
    line=$(bounded $((measured + 240)) "$bin/chat-bench" turns --warmup-secs "$WARMUP" \
      --duration-secs "$DURATION" --llm-delay-ms "$LLM_DELAY_MS" --label "scale-$instances$([ "$SCALE_SQLITE" = shared ] || echo "-sqlite-$SCALE_SQLITE")" \
      --url "$nginx_url" --users "$USERS" --source-nets "$SCALE_SOURCE_NETS" \
      --cpu-pids "$cpu_pids")
    # Where the users' sockets landed: nginx logs each WebSocket (status 101) when it ends,
    # with the upstream that served it.
    sleep 1
    landed=""
    for pair in "${names[@]}"; do
      n=$(awk -v up="${pair#*=}" '$2 == up && $3 == 101 && $4 ~ /^\/socket\.io\// { n++ } END { print n + 0 }' "$nginx_dir/access.log")
      landed="$landed${landed:+,}\"${pair%%=*}\":$n"
    done
    emit "${line%\}},\"instances\":$instances,\"nginx_workers\":${#workers[@]},\"sockets_per_instance\":{$landed}}"
    echo "==> scale-$instances: sockets per instance {$landed}, load: $(uptime)" >&2
    kill_and_wait "${app_pids[@]}" "$redis_pid"
    kill_and_wait "$nginx_pid"
  done
fi
echo "==> done, load: $(uptime)" >&2

if [ "$ONLY" = instructions ]; then
  command -v valgrind >/dev/null || { echo "ONLY=instructions needs valgrind (apt-get install valgrind)" >&2; exit 1; }
  # under_callgrind NAME PID URL EVERY: INSTR_USERS users against URL (a new conversation
  # every EVERY turns); the instructions PID (started under callgrind with
  # --callgrind-out-file=$tmp/NAME/callgrind.out) executes while the load generator
  # measures, per turn; sets line (chat-bench's result with the counts added).
  under_callgrind() {
    local name=$1 vg=$2 url=$3 every=$4 out="$tmp/$1/callgrind.out" instructions turns
    "$bin/chat-bench" turns --warmup-secs "$INSTR_WARMUP" --duration-secs "$INSTR_DURATION" \
      --llm-delay-ms 0 --label "$name" --url "$url" --users "$INSTR_USERS" \
      --fresh-every "$every" >"$tmp/$name.json" &
    local bench_pid=$!
    sleep "$INSTR_WARMUP"
    # callgrind_control finds the process by the HOST it was started with.
    HOST=127.0.0.1 callgrind_control -i on "$vg" >/dev/null
    wait "$bench_pid"
    HOST=127.0.0.1 callgrind_control -i off "$vg" >/dev/null
    HOST=127.0.0.1 callgrind_control -d "$vg" >/dev/null
    instructions=$(awk '/^totals:/ {print $2; exit}' "$out.1")
    line=$(cat "$tmp/$name.json")
    turns=$(grep -o '"turns":[0-9]*' <<<"$line" | head -1 | cut -d: -f2)
    line="${line%\}},\"instructions\":$instructions,\"instructions_per_turn\":$((instructions / turns))}"
    echo "==> $name: $((instructions / turns)) instructions per turn ($turns turns, $INSTR_USERS users)" >&2
    kill "$vg" 2>/dev/null || true
  }
  per_turn() { sed -n 's/.*"instructions_per_turn":\([0-9]*\).*/\1/p' <<<"$1"; }
  for every in 10 "$LONG_EVERY"; do
    # The server. Valgrind starts it ~50 times slower; instrumentation starts after the
    # warm-up.
    name=instructions-every-$every
    SERVER_START_SECS=60 start_server "$name" \
      valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/$name/callgrind.out"
    # start_server's command execs, so its pid is valgrind's.
    under_callgrind "$name" "$server_pid" "$server_url" "$every"
    server_line=$line
    emit "$server_line"
    # The proxy reference (as in `turns`: the conversation so far in each request), the
    # same way: the least a chat server must execute per turn, without the kernel's work.
    name=instructions-proxy-every-$every
    mkdir -p "$tmp/$name"
    # HOST as the server has it, for callgrind_control to find the process.
    HOST=127.0.0.1 valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$tmp/$name/callgrind.out" "$bin/chat-bench" reference --port 0 --llm-url "$fake_url" \
      >"$tmp/$name.out" 2>"$tmp/$name.out.err" &
    vg=$!
    pids+=("$vg")
    proxy_url=$(wait_url "$tmp/$name.out" "reference listening on " 60)
    under_callgrind "$name" "$vg" "$proxy_url" "$every"
    emit "$line"
    echo "==> a new conversation every $every turns: instructions per turn, proxy reference / server $(awk -v p="$(per_turn "$line")" -v s="$(per_turn "$server_line")" 'BEGIN { printf "%.3f", p / s }')" >&2
  done
fi
