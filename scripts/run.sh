#!/usr/bin/env bash
# `make run`: build and start one hub, one ws-gateway and one http-ingress on
# the local defaults, print how to use them, stop all three on Ctrl-C.
# ENGINE=redis (`make run-redis`): the hub keeps channel state in Redis: the
# one answering on $REDIS_URL (default redis://127.0.0.1:6379), or else a
# redis-server started here with AOF, data in target/run-redis/.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-debug}
if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
BIN=target/$PROFILE
LOGS=target/run-logs
mkdir -p "$LOGS"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping pushmesh..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
  exit 0
}
trap stop INT TERM EXIT

start() { # name, args...
  local name=$1; shift
  "$BIN/$name" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log" &
  pids+=($!)
}

wait_ready() { # name url
  for _ in $(seq 1 100); do
    if curl -fsS "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not become ready at $2; its log:" >&2
  tail -n 20 "$LOGS/$1.log" >&2
  exit 1
}

HUB_ARGS=()
ENGINE=${ENGINE:-memory}
if [ "$ENGINE" = redis ]; then
  REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || { echo "ENGINE=redis needs redis-server: make redis-server" >&2; exit 1; }
    hostport=${REDIS_URL#redis://}; hostport=${hostport%%/*}
    mkdir -p target/run-redis
    redis-server --bind "${hostport%:*}" --port "${hostport##*:}" --dir "$PWD/target/run-redis" \
      --appendonly yes --save "" --daemonize no --logfile redis.log &
    pids+=($!)
    for _ in $(seq 1 100); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  HUB_ARGS=(--engine redis --redis-url "$REDIS_URL")
elif [ "$ENGINE" != memory ]; then
  echo "ENGINE must be memory or redis, not $ENGINE" >&2
  exit 1
fi

start hub "${HUB_ARGS[@]}"
wait_ready hub http://127.0.0.1:9090/readyz
start ws-gateway --gateway-id gw-local
start http-ingress --cors-allow-origin http://127.0.0.1:8080,http://localhost:8080
wait_ready ws-gateway http://127.0.0.1:8080/readyz
wait_ready http-ingress http://127.0.0.1:8081/readyz

sed "s|ENGINE_PLACEHOLDER|$ENGINE${REDIS_URL:+ at $REDIS_URL}|" <<'TXT'

pushmesh is running:
  hub           gRPC 127.0.0.1:50051   admin http://127.0.0.1:9090/metrics   (channel state: ENGINE_PLACEHOLDER)
  ws-gateway    ws://127.0.0.1:8080/ws           (add ?format=raw for bare content)
  http-ingress  http://127.0.0.1:8081

Connect a client (browser console, or any WebSocket client):
  ws = new WebSocket("ws://127.0.0.1:8080/ws");
  ws.onmessage = e => console.log(e.data);
  ws.onopen = () => ws.send(JSON.stringify({id: 1, op: "subscribe", channel: "news"}));

Publish:
  curl 'http://127.0.0.1:8081/?content=hello'                                   # broadcast (the seed's form)
  curl -d '{"channel":"news","data":{"text":"hi"}}' http://127.0.0.1:8081/publish
  curl -d '{"data":"to everyone"}' http://127.0.0.1:8081/broadcast
  curl -d '{"connection":"gw-local:1","data":"just you"}' http://127.0.0.1:8081/send
  curl 'http://127.0.0.1:8081/history?channel=news'                             # what the channel keeps

Metrics: curl http://127.0.0.1:8080/metrics   Logs: target/run-logs/
Press Ctrl-C to stop.
TXT

wait -n "${pids[@]}" || true
echo "a pushmesh process exited; see target/run-logs/" >&2
