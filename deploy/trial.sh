#!/usr/bin/env bash
# A trial deployment on one machine, the way devices would run it: a TLS SuperLink with
# SuperNode authentication, N SuperNodes (each its own process, data file and state folder)
# and `flwr run`. Usage, from the project folder:
#   deploy/trial.sh [SCENARIO] [N]          (defaults: scenarios/quickstart.toml, its num-clients)
# Everything goes to $TRIAL (default /tmp/fedlth-trial); Ctrl-C stops every process it started.
set -euo pipefail
SCENARIO=${1:-scenarios/quickstart.toml}
N=${2:-$(python3 -c "import sys; from fedlth.scenario import load_scenario; print(load_scenario(sys.argv[1])['num-clients'])" "$SCENARIO")}
TRIAL=${TRIAL:-/tmp/fedlth-trial}
PORT=${PORT:-9092}
export FLWR_HOME="$TRIAL/flwr-home"
mkdir -p "$TRIAL/logs" "$FLWR_HOME"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

# 1. a throw-away CA, the SuperLink's certificate and one key pair per SuperNode
[ -f "$TRIAL/certs/ca.crt" ] || fedlth deploy certs "$TRIAL/certs" --nodes "$N"
# 2. each SuperNode's own data (a device would already hold its file)
[ -f "$TRIAL/data/client-0.npz" ] || fedlth deploy export-data "$SCENARIO" "$TRIAL/data"
# 3. the SuperLink: TLS + SuperNode authentication, apps run with the installed packages
setsid flower-superlink --host 127.0.0.1 --port "$PORT" \
  --ssl-ca-certfile "$TRIAL/certs/ca.crt" --ssl-certfile "$TRIAL/certs/server.pem" \
  --ssl-keyfile "$TRIAL/certs/server.key" --enable-supernode-auth \
  --disable-runtime-dependency-installation >"$TRIAL/logs/superlink.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 1; done
# 4. a flwr connection that trusts the CA, then every node's public key registered
fedlth deploy connection trial --address "127.0.0.1:$PORT" --root-certificates "$TRIAL/certs/ca.crt" --default
for i in $(seq 0 $((N - 1))); do flwr supernode register "$TRIAL/certs/node-$i.pub" trial; done
# 5. the SuperNodes: partition id, data file and state folder in --node-config
for i in $(seq 0 $((N - 1))); do
  setsid flower-supernode --superlink "127.0.0.1:$PORT" --root-certificates "$TRIAL/certs/ca.crt" \
    --auth-supernode-private-key "$TRIAL/certs/node-$i.key" --port $((PORT + 100 + i)) \
    --node-config "partition-id=$i data-file=\"$TRIAL/data/client-$i.npz\" state-dir=\"$TRIAL/state/node-$i\"" \
    >"$TRIAL/logs/node-$i.log" 2>&1 &
  pids+=($!)
done
# 6. the run (outputs: the scenario's out-dir, else runs/ under the ServerApp's folder)
flwr run . trial --run-config "$SCENARIO" --stream
