#!/usr/bin/env bash
# kafka-server-start.sh server.properties: the broker (heap 1G unless KAFKA_HEAP_OPTS), logging to stdout.
set -euo pipefail
base_dir="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ]; then
    echo "USAGE: $0 server.properties [--override property=value]*" >&2
    exit 1
fi
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
export KAFKA_LOG4J_OPTS="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/config/log4j2.properties}"
exec "$base_dir/bin/kafka-run-class.sh" kafka.Kafka "$@"
