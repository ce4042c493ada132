#!/bin/bash
# Lets a streaming replica (the compose "cluster" profile's postgres-replica)
# connect for replication: the image's own pg_hba.conf admits every database
# but not the replication pseudo-database.
set -euo pipefail
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
