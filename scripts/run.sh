#!/usr/bin/env bash
# `make run`: build and start one hub, one ws-gateway and one http-ingress on
# the local defaults, print how to use them, and keep them running until
# Ctrl-C.
#
# - Its ports are checked first: if any is taken, it says by whom (process
#   and pid, from `ss -ltnp`) and exits 1 without touching anything, so a
#   second `make run` cannot mistake the first one's services for its own.
# - A service that dies is restarted, as Kubernetes would: after a backoff
#   (1 s, doubling to 8 s; back to 1 s once it has stayed up 30 s), saying
#   so on the terminal. `kill -9` the hub and watch the system recover.
# - It exits non-zero when it cannot keep its own processes running: one
#   that never becomes ready at start, or one that keeps dying (5 exits in
#   a row, each within 30 s of its start).
#
# Overrides (the tests use them to run beside other tests and a user's own
# `make run`): PUSHMESH_RUN_HOST (127.0.0.1; any 127.x.y.z works on Linux),
# PUSHMESH_RUN_LOGS (target/run-logs), PUSHMESH_RUN_BIN (a directory of
# built binaries: no cargo build), PROFILE (debug or release).
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=${PUSHMESH_RUN_HOST:-127.0.0.1}
LOGS=${PUSHMESH_RUN_LOGS:-target/run-logs}
PROFILE=${PROFILE:-debug}
HUB_GRPC=$HOST:50051 HUB_ADMIN=$HOST:9090 GATEWAY=$HOST:8080 INGRESS=$HOST:8081 INGRESS_GRPC=$HOST:8082
STABLE_SECS=30   # up this long: the next exit starts the backoff afresh
MAX_FAILS=5      # exits in a row, each within STABLE_SECS of the start: a crash loop
READY_SECS=20    # at start and after each restart

say() { printf 'make run: %s\n' "$*" >&2; }

# The listener on host:port (exactly, or a wildcard address that covers it),
# as "name (pid N)" or "an unknown process" when ss cannot tell; nothing
# when the port is free.
holder() {
  local addr=$1 port=${1##*:} line
  if command -v ss >/dev/null 2>&1; then
    while read -r line; do
      local local_addr
      local_addr=$(awk '{print $4}' <<<"$line")
      case "$local_addr" in
        "$addr" | "0.0.0.0:$port" | "*:$port" | "[::]:$port") ;;
        *) continue ;;
      esac
      if [[ $line =~ users:\(\(\"([^\"]+)\",pid=([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]} (pid ${BASH_REMATCH[2]})"
      else
        echo "an unknown process (ss shows no owner; run as root to see it)"
      fi
      return
    done < <(ss -Hltnp "sport = :$port" 2>/dev/null)
  elif (exec 3<>"/dev/tcp/${addr%:*}/$port") 2>/dev/null; then
    echo "an unknown process (install iproute2's ss to see which)"
  fi
}

taken=0
for addr in "$HUB_GRPC" "$HUB_ADMIN" "$GATEWAY" "$INGRESS" "$INGRESS_GRPC"; do
  who=$(holder "$addr")
  if [ -n "$who" ]; then
    say "$addr is already in use by $who"
    taken=1
  fi
done
if [ "$taken" = 1 ]; then
  say "not starting: is another \`make run\` or \`pushmesh dev\` running? Stop it first (Ctrl-C in its terminal, or kill the pid above)."
  exit 1
fi

if [ -n "${PUSHMESH_RUN_BIN:-}" ]; then
  BIN=$PUSHMESH_RUN_BIN
else
  if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
  BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
fi

# One `make run` per log directory: the lock is held while this script runs,
# so a second one never truncates the first one's logs.
mkdir -p "$LOGS"
exec 9>"$LOGS/.lock"
if ! flock -n 9; then
  say "another \`make run\` is using $LOGS (pid $(cat "$LOGS/.pid" 2>/dev/null || echo '?')); not starting"
  exit 1
fi
echo $$ >"$LOGS/.pid"

declare -A ARGS PID STARTED FAILS
ARGS[hub]="--grpc-addr $HUB_GRPC --admin-addr $HUB_ADMIN"
ARGS[ws-gateway]="--listen-addr $GATEWAY --hub http://$HUB_GRPC --gateway-id gw-local"
ARGS[http-ingress]="--listen-addr $INGRESS --grpc-addr $INGRESS_GRPC --hub http://$HUB_GRPC --cors-allow-origin http://$GATEWAY,http://localhost:${GATEWAY##*:}"
declare -A READYZ=([hub]=$HUB_ADMIN [ws-gateway]=$GATEWAY [http-ingress]=$INGRESS)
ORDER=(hub ws-gateway http-ingress)

stopping=0
stop() {
  trap - INT TERM
  stopping=1
  echo >&2
  say "stopping pushmesh..."
  for name in "${ORDER[@]}"; do
    [ -n "${PID[$name]:-}" ] && kill -TERM "${PID[$name]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  say "stopped."
  exit "${1:-0}"
}
trap 'stop 0' INT TERM

start() { # name; appends to its logs, so a crash's log survives the restart
  local name=$1
  # shellcheck disable=SC2086  # ARGS holds words
  "$BIN/$name" ${ARGS[$name]} >>"$LOGS/$name.out" 2>>"$LOGS/$name.log" &
  PID[$name]=$!
  STARTED[$name]=$SECONDS
}

# Ready means: our own process is alive and /readyz answers 200. Fails (1)
# if the process dies or READY_SECS pass.
wait_ready() { # name
  local name=$1 pid=${PID[$1]}
  for _ in $(seq 1 $((READY_SECS * 10))); do
    kill -0 "$pid" 2>/dev/null || return 1
    if curl -fsS "http://${READYZ[$name]}/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_failed() { # name
  say "$1 did not start (not ready on ${READYZ[$1]} within ${READY_SECS}s); the end of $LOGS/$1.log:"
  tail -n 20 "$LOGS/$1.log" >&2
  stop 1
}

for name in "${ORDER[@]}"; do
  : >"$LOGS/$name.log"
  : >"$LOGS/$name.out"
  FAILS[$name]=0
done
start hub
wait_ready hub || start_failed hub
start ws-gateway
start http-ingress
wait_ready ws-gateway || start_failed ws-gateway
wait_ready http-ingress || start_failed http-ingress

cat <<TXT

pushmesh is running:
  hub           gRPC $HUB_GRPC   admin http://$HUB_ADMIN/metrics
  ws-gateway    ws://$GATEWAY/ws           (add ?format=raw for bare content)
  http-ingress  http://$INGRESS   (gRPC API: $INGRESS_GRPC)

Open the demo page http://$GATEWAY/ and, in its browser console (or with
any WebSocket client):
  ws = new WebSocket("ws://$GATEWAY/ws");
  ws.onmessage = e => console.log(e.data);
  ws.onopen = () => ws.send(JSON.stringify({id: 1, op: "subscribe", channel: "news"}));

Publish:
  curl 'http://$INGRESS/?content=hello'                                   # broadcast (the seed's form)
  curl --json '{"channel":"news","data":{"text":"hi"}}' http://$INGRESS/publish
  curl --json '{"data":"to everyone"}' http://$INGRESS/broadcast
  curl --json '{"connection":"gw-local:1","data":"just you"}' http://$INGRESS/send

Metrics: curl http://$GATEWAY/metrics   Logs: $LOGS/
A service that dies is restarted (try: kill -9 ${PID[hub]}, the hub).
Press Ctrl-C to stop.
TXT

how() { # exit status of wait → words
  if [ "$1" -gt 128 ]; then
    echo "was killed by signal $(kill -l "$(($1 - 128))" 2>/dev/null || echo "$(($1 - 128))")"
  else
    echo "exited with code $1"
  fi
}

# Supervise: whichever process exits is restarted after its backoff.
while :; do
  gone=
  status=0
  wait -n -p gone "${PID[@]}" || status=$?
  [ "$stopping" = 1 ] && break
  [ -n "$gone" ] || continue
  for name in "${ORDER[@]}"; do [ "${PID[$name]}" = "$gone" ] && break; done
  up=$((SECONDS - STARTED[$name]))
  if [ "$up" -ge "$STABLE_SECS" ]; then FAILS[$name]=0; fi
  FAILS[$name]=$((FAILS[$name] + 1))
  if [ "${FAILS[$name]}" -ge "$MAX_FAILS" ]; then
    say "$name (pid $gone) $(how "$status") after ${up}s: $MAX_FAILS exits in a row, it keeps crashing; giving up. The end of $LOGS/$name.log:"
    tail -n 20 "$LOGS/$name.log" >&2
    stop 1
  fi
  backoff=$((1 << (FAILS[$name] - 1)))
  [ "$backoff" -gt 8 ] && backoff=8
  say "$name (pid $gone) $(how "$status") after ${up}s; restarting it in ${backoff}s (restart ${FAILS[$name]} of at most $((MAX_FAILS - 1)) in a row)"
  sleep "$backoff" &
  wait $! || true
  start "$name"
  if wait_ready "$name"; then
    say "$name is back (pid ${PID[$name]}), ready on ${READYZ[$name]}"
  else
    say "$name (pid ${PID[$name]}) is not ready after ${READY_SECS}s; see $LOGS/$name.log"
  fi
done
