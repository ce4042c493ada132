#!/usr/bin/env bash
# kafka-run-class.sh CLASS [ARGS]: the distribution's script reduced to what this
# image uses. The same variables: KAFKA_HEAP_OPTS (default -Xmx256M),
# KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_GC_LOG_OPTS, KAFKA_JMX_OPTS, KAFKA_LOG4J_OPTS
# (default: config/tools-log4j2.properties), KAFKA_OPTS.
set -euo pipefail
base_dir="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ]; then
    echo "USAGE: $0 classname [opts]" >&2
    exit 1
fi
: "${KAFKA_HEAP_OPTS:=-Xmx256M}"
: "${KAFKA_JVM_PERFORMANCE_OPTS:=-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"
: "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.properties}"
# shellcheck disable=SC2086 # each variable is a list of JVM options
exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS ${KAFKA_GC_LOG_OPTS:-} ${KAFKA_JMX_OPTS:-} \
    $KAFKA_LOG4J_OPTS "-Dkafka.logs.dir=$base_dir/logs" ${KAFKA_OPTS:-} -cp "$base_dir/libs/*" "$@"
