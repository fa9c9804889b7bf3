#!/usr/bin/env bash
# A local three-node RabbitMQ cluster on spare ports (5701-5703, beside the
# broker on 5672), a load through two workers with one node stopped and
# restarted mid-run, the lost and duplicated effects counted (must be 0),
# then the cluster removed. Needs rabbitmq-server (run as root or rabbitmq)
# and Redis on 127.0.0.1:6379. Takes about two minutes once built.
#   bash deploy/rabbitmq/cluster-load.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/escalator-target}"
base=$(mktemp -d /tmp/escalator-rmq-cluster.XXXXXX)
chmod 755 "$base"
nodes=()
ctl() { rabbitmqctl -q -n "$1" "${@:2}"; }

cleanup() {
  for n in "${nodes[@]}"; do ctl "$n" stop >/dev/null 2>&1 || true; done
  rm -rf "$base"
}
trap cleanup EXIT

for i in 1 2 3; do
  name="escalator-c$i@localhost"
  dir="$base/c$i"
  mkdir -p "$dir/log" "$dir/mnesia"
  echo "[]." > "$dir/enabled_plugins"
  printf 'listeners.tcp.local = 127.0.0.1:570%s\n' "$i" > "$dir/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || true
  RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_NODENAME="$name" \
  RABBITMQ_NODE_PORT="570$i" RABBITMQ_DIST_PORT="2570$i" \
  RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_PID_FILE="$dir/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    rabbitmq-server -detached
  nodes+=("$name")
done
for n in "${nodes[@]}"; do
  for _ in $(seq 1 60); do ctl "$n" await_startup >/dev/null 2>&1 && break; sleep 1; done
  ctl "$n" await_startup >/dev/null
done
for n in "${nodes[@]:1}"; do
  ctl "$n" stop_app >/dev/null
  ctl "$n" join_cluster "${nodes[0]}" >/dev/null
  ctl "$n" start_app >/dev/null
done
vhost="escalator-cluster-load"
ctl "${nodes[0]}" add_vhost "$vhost" >/dev/null
ctl "${nodes[0]}" set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
echo "cluster: ${nodes[*]} on 127.0.0.1:5701-5703, vhost $vhost"

ESCALATOR_TEST_CLUSTER_URL="amqp://guest:guest@127.0.0.1:5701,127.0.0.1:5702,127.0.0.1:5703/$vhost" \
ESCALATOR_TEST_CLUSTER_NODES="$(IFS=,; echo "${nodes[*]}")" \
ESCALATOR_TEST_CLUSTER_VHOST="$vhost" \
  cargo test --test rabbitmq_cluster -- --ignored --nocapture
