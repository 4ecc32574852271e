#!/bin/bash
# The postgres image's entrypoint contract, as the compose file uses it: on the first start
# (empty PGDATA) initdb with POSTGRES_USER, the password from POSTGRES_PASSWORD_FILE and
# POSTGRES_INITDB_ARGS, listen on every address, create POSTGRES_DB and run
# /docker-entrypoint-initdb.d/*.sh|*.sql on a socket-only server; then exec the command.
# As non-root it never chowns (the compose file's user: 70 owns PGDATA already).
set -euo pipefail

if [[ ${1:-} == -* ]]; then set -- postgres "$@"; fi
if [[ ${1:-} != postgres || $(id -u) == 0 ]]; then
  [[ ${1:-} == postgres ]] && { echo "stand-in: run as the postgres uid (user: 70), not root" >&2; exit 1; }
  exec "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  : "${POSTGRES_USER:=postgres}"
  : "${POSTGRES_DB:=$POSTGRES_USER}"
  if [[ -n ${POSTGRES_PASSWORD_FILE:-} ]]; then
    POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
  fi
  [[ -n ${POSTGRES_PASSWORD:-} ]] || { echo "stand-in: no POSTGRES_PASSWORD(_FILE)" >&2; exit 1; }
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, as upstream
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  export PGPASSWORD=$POSTGRES_PASSWORD PGUSER=$POSTGRES_USER PGHOST=/var/run/postgresql
  pg_ctl -D "$PGDATA" -w -o "$(printf '%q ' "${@:2}") -c listen_addresses='' -p 5432" start
  if [[ $POSTGRES_DB != postgres ]]; then
    psql -v ON_ERROR_STOP=1 -d postgres -q -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  shopt -s nullglob
  for f in /docker-entrypoint-initdb.d/*; do
    case $f in
    *.sh) . "$f" ;;
    *.sql) psql -v ON_ERROR_STOP=1 -d "$POSTGRES_DB" -f "$f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGPASSWORD POSTGRES_PASSWORD
  echo "stand-in: PostgreSQL init process complete; ready for start up."
fi
exec "$@"
