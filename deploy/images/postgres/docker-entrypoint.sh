#!/usr/bin/env bash
# Entrypoint of the locally built postgres:15 image (deploy/images/build). It keeps
# the official image's contract, so that docker-compose.yml and testcontainers work
# the same with either image:
#
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
#   POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default: the user), each also as
#   <NAME>_FILE; POSTGRES_INITDB_ARGS; POSTGRES_HOST_AUTH_METHOD (default
#   scram-sha-256); PGDATA (default /var/lib/postgresql/data); the scripts in
#   /docker-entrypoint-initdb.d (*.sh, *.sql, *.sql.gz) run once, on an empty
#   PGDATA; arguments starting with "-" go to postgres.
#
# Readiness: the first start initialises PGDATA with a temporary server that listens
# on the Unix socket only, and TCP (port 5432) opens only when the final server is up.
# A client that can log in over TCP (testcontainers runs psql --host 127.0.0.1 inside
# the container) therefore never sees the half-initialised server.
set -Eeuo pipefail

# VAR or VAR_FILE (a Docker secret), not both.
file_env() {
  local var="$1" default="${2:-}"
  local file_var="${var}_FILE"
  if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
    echo >&2 "error: both $var and $file_var are set (they are exclusive)"
    exit 1
  fi
  local value="$default"
  if [ -n "${!var:-}" ]; then
    value="${!var}"
  elif [ -n "${!file_var:-}" ]; then
    value="$(<"${!file_var}")"
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
  : "${PGDATA:=/var/lib/postgresql/data}"
  export PGDATA
  if [ -s "$PGDATA/PG_VERSION" ]; then
    DATABASE_ALREADY_EXISTS=true
  else
    DATABASE_ALREADY_EXISTS=
  fi
}

init_database() {
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    cat >&2 <<'MSG'
error: the database is uninitialised and POSTGRES_PASSWORD is not set.
       Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust, which lets anyone
       who reaches the port in without a password).
MSG
    exit 1
  fi
  # Fails early (before initdb) when the directory is unreadable.
  ls /docker-entrypoint-initdb.d/ >/dev/null

  local pwfile
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  # POSTGRES_INITDB_ARGS is a shell word list, as in the official image.
  eval 'initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host='"$POSTGRES_HOST_AUTH_METHOD"' '"$POSTGRES_INITDB_ARGS"
  rm -f "$pwfile"
  # Any address, with the password: the container's network is the boundary.
  printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

  # Temporary server: Unix socket only, so nothing outside sees it (see above).
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p ${PGPORT:-5432}" start

  local psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER")
  if [ "$POSTGRES_DB" != postgres ]; then
    local exists
    exists="$("${psql[@]}" --dbname postgres -tA -v db="$POSTGRES_DB" \
      <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")"
    if [ -z "$exists" ]; then
      "${psql[@]}" --dbname postgres -v db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
    fi
  fi

  local f
  for f in /docker-entrypoint-initdb.d/*; do
    [ -e "$f" ] || continue
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then
          echo "$0: running $f"
          "$f"
        else
          echo "$0: sourcing $f"
          # shellcheck disable=SC1090
          . "$f"
        fi
        ;;
      *.sql) echo "$0: running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
      *) echo "$0: ignoring $f" ;;
    esac
  done

  pg_ctl -D "$PGDATA" -m fast -w stop
  echo 'PostgreSQL init process complete; ready for start up.'
}

if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi

if [ "$1" = postgres ]; then
  setup_env
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
  fi
  if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
    init_database
  else
    echo 'PostgreSQL database directory contains a database; skipping initialisation'
  fi
fi

exec "$@"
