#!/usr/bin/env bash
# A trial deployment on one machine, the way devices would run it: a TLS SuperLink with
# SuperNode authentication and a database, on loopback only; an nginx gateway that passes
# Flower's Fleet API alone (what devices dial); N SuperNodes (each its own process, data file
# and state folder) and `flwr run`. Needs nginx (apt-get install nginx-light). Usage, from the
# project folder:
#   deploy/trial.sh [SCENARIO] [N]          (defaults: scenarios/quickstart.toml, its num-clients)
# Everything goes to $TRIAL/<scenario>-<sha256 of the file>-n<N> (TRIAL default /tmp/fedlth-trial):
# certificates, keys, data files, node state and the SuperLink database are made once per scenario
# file content and node count, reused by a later trial of the same, never by another one; each
# run writes to a new runs/run-<time> folder there. Ctrl-C stops every process it started. Exits
# non-zero when the run failed (summary.json status "failed", e.g. every update rejected).
set -euo pipefail
SCENARIO=${1:-scenarios/quickstart.toml}
N=${2:-$(python3 -c "import sys; from fedlth.config.scenario import load_scenario; print(load_scenario(sys.argv[1])['num-clients'])" "$SCENARIO")}
ROOT=${TRIAL:-/tmp/fedlth-trial}
TRIAL="$ROOT/$(basename "$SCENARIO" .toml)-$(sha256sum <"$SCENARIO" | cut -c1-12)-n$N"
PORT=${PORT:-9092}            # the gateway: what devices dial (Fleet API only)
LINK_PORT=$((PORT + 1))       # the SuperLink itself, 127.0.0.1 only (flwr: Control API)
command -v nginx >/dev/null || { echo "trial.sh: needs nginx (apt-get install nginx-light)" >&2; exit 2; }
export FLWR_HOME="$ROOT/flwr-home"
mkdir -p "$TRIAL/logs" "$FLWR_HOME"
echo "trial.sh: $SCENARIO with $N nodes in $TRIAL"
pids=()
cleanup() {  # TERM every process group it started, KILL what is still there after 15 s
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  for _ in $(seq 15); do
    left=0; for p in "${pids[@]}"; do kill -0 -- "-$p" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && return; sleep 1
  done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
wait_port() { for _ in $(seq 60); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 1; done; echo "nothing on port $1" >&2; exit 1; }

# 1. a throw-away CA, the SuperLink's certificate and one key pair per SuperNode
[ -f "$TRIAL/certs/ca.crt" ] || fedlth deploy certs "$TRIAL/certs" --nodes "$N"
# 2. each SuperNode's own data (a device would already hold its file)
[ -f "$TRIAL/data/client-0.npz" ] || fedlth deploy export-data "$SCENARIO" "$TRIAL/data"
# 3. the SuperLink on loopback: TLS + SuperNode authentication, state in a database, apps run
#    with the installed packages
setsid flower-superlink --host 127.0.0.1 --port "$LINK_PORT" \
  --ssl-ca-certfile "$TRIAL/certs/ca.crt" --ssl-certfile "$TRIAL/certs/server.pem" \
  --ssl-keyfile "$TRIAL/certs/server.key" --enable-supernode-auth --database "$TRIAL/superlink.db" \
  --disable-runtime-dependency-installation >"$TRIAL/logs/superlink.log" 2>&1 &
pids+=($!)
wait_port "$LINK_PORT"
# 4. the gateway devices dial: the Fleet API only (a real deployment listens on 0.0.0.0)
fedlth deploy gateway "$TRIAL/gateway" --listen "127.0.0.1:$PORT" --superlink-port "$LINK_PORT" \
  --certs "$TRIAL/certs" --force
setsid nginx -p "$TRIAL/gateway/" -e error.log -c nginx.conf >"$TRIAL/logs/gateway.log" 2>&1 &
pids+=($!)
wait_port "$PORT"
# 5. the operator's flwr connection (the SuperLink's own port), then every node's public key
#    registered (the database keeps them: a later trial in this folder finds them there)
fedlth deploy connection trial --address "127.0.0.1:$LINK_PORT" --root-certificates "$TRIAL/certs/ca.crt" --default
for i in $(seq 0 $((N - 1))); do
  out=$(flwr supernode register "$TRIAL/certs/node-$i.pub" trial 2>&1) || grep -qi "already" <<<"$out" \
    || { echo "$out" >&2; exit 1; }
done
# 6. the SuperNodes, through the gateway: partition id, data file and state folder in --node-config.
#    Each restarts 10 s after it exits, as deploy/fedlth-supernode@.service does: a SuperLink
#    that remembers a node from an earlier trial (its database) refuses it until the old
#    heartbeat lapses (up to a minute).
for i in $(seq 0 $((N - 1))); do
  setsid bash -c 'while :; do "$@"; sleep 10; done' "node-$i" \
    flower-supernode --superlink "127.0.0.1:$PORT" --root-certificates "$TRIAL/certs/ca.crt" \
    --auth-supernode-private-key "$TRIAL/certs/node-$i.key" --port $((PORT + 100 + i)) \
    --node-config "partition-id=$i data-file=\"$TRIAL/data/client-$i.npz\" state-dir=\"$TRIAL/state/node-$i\"" \
    >>"$TRIAL/logs/node-$i.log" 2>&1 &
  pids+=($!)
done
active() { grep -o 'Activated node_id=[0-9]*' "$TRIAL/logs/superlink.log" | sort -u | wc -l; }
for _ in $(seq 180); do [ "$(active)" -ge "$N" ] && break; sleep 1; done
[ "$(active)" -ge "$N" ] || { echo "trial.sh: only $(active) of $N SuperNodes joined; see $TRIAL/logs" >&2; exit 1; }
# 7. the run, into a new folder of its own: the scenario with out-dir set (flwr run takes one TOML
#    file or key=value pairs, not both). flwr run exits 0 whatever the run did, so the outcome
#    is read from the run's summary.json (status "ok", or "failed" and why).
OUT="$TRIAL/runs/run-$(date +%Y%m%d-%H%M%S)"
python3 - "$SCENARIO" "$OUT" "$TRIAL/run-config.toml" <<'PY'
import sys
from pathlib import Path
from fedlth.config.scenario import load_scenario, to_toml
Path(sys.argv[3]).write_text(to_toml(load_scenario(sys.argv[1]) | {"out-dir": sys.argv[2]}))
PY
flwr run . trial --run-config "$TRIAL/run-config.toml" --stream
status=$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["status"], s.get("failure") or "")' \
  "$OUT/summary.json" 2>/dev/null || echo "failed the ServerApp wrote no summary.json (see the log above)")
case "$status" in
  ok*) echo "trial.sh: the run finished; outputs in $OUT" ;;
  *) echo "trial.sh: FAILED: ${status#failed }; outputs in $OUT, logs in $TRIAL/logs" >&2; exit 1 ;;
esac
