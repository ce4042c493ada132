#!/usr/bin/env bash
# The official postgres image's entrypoint contract, for this stand-in (see ../README.md):
# - `docker-entrypoint.sh postgres [-c ...]`: as root, own PGDATA and re-run as `postgres`;
# - an empty PGDATA is initialised: initdb with POSTGRES_USER (default postgres) and
#   POSTGRES_PASSWORD (or *_FILE), POSTGRES_INITDB_ARGS; `host all all all
#   scram-sha-256` (POSTGRES_HOST_AUTH_METHOD) in pg_hba.conf; POSTGRES_DB (default
#   POSTGRES_USER) created; then /docker-entrypoint-initdb.d/* in name order on a
#   server listening on the Unix socket only: *.sh executed when executable, sourced
#   otherwise; *.sql, *.sql.gz, *.sql.xz, *.sql.zst through psql as POSTGRES_USER;
# - anything else is run as given.
set -Eeo pipefail

# file_env VAR [DEFAULT]: VAR from itself, from the file VAR_FILE names, or DEFAULT.
file_env() {
    local var="$1" file_var="${1}_FILE" default="${2:-}" value
    if [ "${!var:-}" ] && [ "${!file_var:-}" ]; then
        echo >&2 "error: both $var and $file_var are set (but are exclusive)"
        exit 1
    fi
    value="$default"
    if [ "${!var:-}" ]; then
        value="${!var}"
    elif [ "${!file_var:-}" ]; then
        value="$(< "${!file_var}")"
    fi
    export "$var"="$value"
    unset "$file_var"
}

setup_env() {
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
    DATABASE_ALREADY_EXISTS=
    if [ -s "$PGDATA/PG_VERSION" ]; then
        DATABASE_ALREADY_EXISTS=true
    fi
}

# psql as POSTGRES_USER on POSTGRES_DB over the Unix socket, stopping at the first error.
process_sql() {
    PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc \
        --dbname "$POSTGRES_DB" "$@"
}

init_database_dir() {
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        echo >&2 "error: the database is uninitialized and POSTGRES_PASSWORD is not set"
        echo >&2 "       (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow any connection without one)"
        exit 1
    fi
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        $POSTGRES_INITDB_ARGS
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
}

temp_server_start() {
    # The command's own settings (`-c max_connections=200` ...) apply to the temporary server too.
    local args=("$@" -c "listen_addresses=" -p "${PGPORT:-5432}")
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$(printf '%q ' "${args[@]}")" -w start
}

temp_server_stop() {
    PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

setup_db() {
    if [ "$POSTGRES_DB" != postgres ]; then
        local exists
        exists="$(POSTGRES_DB=postgres process_sql --tuples-only --set db="$POSTGRES_DB" <<< \
            "SELECT 1 FROM pg_database WHERE datname = :'db';")"
        if [ -z "$exists" ]; then
            POSTGRES_DB=postgres process_sql --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
        fi
    fi
}

process_init_files() {
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    echo "$0: running $f"; "$f"
                else
                    echo "$0: sourcing $f"; . "$f"
                fi
                ;;
            *.sql)     echo "$0: running $f"; process_sql -f "$f"; echo ;;
            *.sql.gz)  echo "$0: running $f"; gunzip -c "$f" | process_sql; echo ;;
            *.sql.xz)  echo "$0: running $f"; xzcat "$f" | process_sql; echo ;;
            *.sql.zst) echo "$0: running $f"; zstd -dc "$f" | process_sql; echo ;;
            */\*)      ;;  # an empty directory
            *)         echo "$0: ignoring $f" ;;
        esac
    done
}

main() {
    if [ "${1:0:1}" = '-' ]; then
        set -- postgres "$@"
    fi
    if [ "$1" != postgres ]; then
        exec "$@"
    fi
    setup_env
    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$PGDATA"
        chmod 00700 "$PGDATA" || :
        find "$PGDATA" \! -user postgres -exec chown postgres: '{}' +
        mkdir -p /var/run/postgresql
        chmod 03775 /var/run/postgresql || :
        find /var/run/postgresql \! -user postgres -exec chown postgres: '{}' +
        exec gosu postgres "${BASH_SOURCE[0]}" "$@"
    fi
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
        init_database_dir
        export PGPASSWORD="${PGPASSWORD:-${POSTGRES_PASSWORD:-}}"
        temp_server_start "${@:2}"
        setup_db
        process_init_files
        temp_server_stop
        unset PGPASSWORD
        echo
        echo 'PostgreSQL init process complete; ready for start up.'
        echo
    else
        echo
        echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
        echo
    fi
    exec "$@"
}

main "$@"
