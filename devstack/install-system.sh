#!/usr/bin/env bash
# Installs the machine packages the stack needs, when they are missing:
# PostgreSQL server binaries, Java 17+ and Maven (for the Kafka broker's jars),
# with --test also docker-compose (to validate docker-compose.yml) and
# Prometheus (its promtool checks the alert rules; tests scrape with it), with
# --bench wrk, and with PROMETHEUS=1 in the environment (make up PROMETHEUS=1)
# Prometheus. With --compose (make compose-test) also Debian's docker.io
# (dockerd, containerd, runc, iptables) and debootstrap.
# Uses Debian's apt-get as root; otherwise says what to install.
set -euo pipefail

want=()
if [ "${1:-}" = "--compose" ]; then
    command -v dockerd >/dev/null 2>&1 || want+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || want+=(debootstrap)
fi
have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || [ -n "${PG_BINDIR:-}" ]; }
have_pg || want+=(postgresql)
command -v java >/dev/null 2>&1 || want+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || want+=(maven)
command -v runuser >/dev/null 2>&1 || want+=(util-linux)
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--bench" ]; then
    command -v docker-compose >/dev/null 2>&1 || want+=(docker-compose)
fi
if [ "${1:-}" = "--test" ] || { [ -n "${PROMETHEUS:-}" ] && [ "${PROMETHEUS}" != "0" ]; }; then
    command -v promtool >/dev/null 2>&1 || want+=(prometheus)
fi
if [ "${1:-}" = "--bench" ]; then
    command -v wrk >/dev/null 2>&1 || want+=(wrk)
fi

[ ${#want[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing system packages: ${want[*]}" >&2
    echo "       install them (Debian/Ubuntu: sudo apt-get install -y ${want[*]}) and run make again" >&2
    exit 1
fi

echo "[devstack] installing system packages: ${want[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
# Do not let the packages start their own services (Debian's postgresql would
# start a cluster on 5432): the stack runs its own PostgreSQL.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq >/dev/null
apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
echo "[devstack] installed: ${want[*]}" >&2
