# shellcheck shell=bash
# Shared by the scripts in deploy/bin/ (sourced, never run). Every path is an environment
# variable, so each step also runs natively (tests, a host without Docker) with other paths.
#
# Layout (defaults; deploy/.env may set any of them, the environment wins over .env):
#   DEPLOY_DIR    deploy/ (this repository's compose stack)
#   DATA_ROOT     /srv/synapse-guard            the LUKS-encrypted volume (deploy/README.md)
#   SYNAPSE_DATA  $DATA_ROOT/synapse            Synapse's /data: homeserver.yaml, signing key
#   MEDIA_STORE   $SYNAPSE_DATA/media_store     Synapse's media_store_path on the host
#   KEYS_DIR      $DATA_ROOT/secrets            generated secrets, mode 0400 (the old name
#                 SECRETS_DIR is still read; renamed: linters take it for a credential)
#   BACKUP_DIR    $DATA_ROOT/backups            encrypted backups (copied off-site)
#   SERVER_NAME   the Matrix server name (init)
#
# Messages go to stderr, prefixed with the script's name. No function here prints a secret.

set -euo pipefail
umask 077

SCRIPT_NAME=$(basename "$0")
DEPLOY_DIR=${DEPLOY_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

say() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
	printf '[%s] REFUSED: %s\n' "$SCRIPT_NAME" "$*" >&2
	exit 1
}

# Simple KEY=value lines of deploy/.env (what docker compose reads too). Never `source`d, so a
# value cannot run code; variables already in the environment win and, as in docker compose,
# the last line of a key repeated in the file wins over its earlier ones.
load_env_file() {
	local file=${ENV_FILE:-$DEPLOY_DIR/.env} line key value
	local -A from_file=()
	[[ -f $file ]] || return 0
	while IFS= read -r line || [[ -n $line ]]; do
		[[ $line =~ ^[[:space:]]*([A-Z_][A-Z0-9_]*)=(.*)$ ]] || continue
		key=${BASH_REMATCH[1]}
		value=${BASH_REMATCH[2]}
		value=${value%\"}
		value=${value#\"}
		value=${value%\'}
		value=${value#\'}
		# (an `if`, not `&&`: a variable already set on the last line must not fail the loop,
		# which `set -e` would turn into a silent exit of every script)
		if [[ -z ${!key+set} || -n ${from_file[$key]:-} ]]; then
			export "$key=$value"
			from_file[$key]=1
		fi
	done <"$file"
}

set_layout() {
	load_env_file
	DATA_ROOT=${DATA_ROOT:-/srv/synapse-guard}
	SYNAPSE_DATA=${SYNAPSE_DATA:-$DATA_ROOT/synapse}
	MEDIA_STORE=${MEDIA_STORE:-$SYNAPSE_DATA/media_store}
	KEYS_DIR=${KEYS_DIR:-${SECRETS_DIR:-$DATA_ROOT/secrets}}
	BACKUP_DIR=${BACKUP_DIR:-$DATA_ROOT/backups}
	COMPOSE_FILE=${COMPOSE_FILE:-$DEPLOY_DIR/docker-compose.yml}
}

require_cmd() {
	local cmd
	for cmd in "$@"; do
		command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is not installed (or not on PATH)"
	done
}

require_gnu_tar() {
	require_cmd tar
	tar --version 2>/dev/null | head -n1 | grep -q 'GNU tar' || die "GNU tar is needed (found: $(tar --version 2>&1 | head -n1))"
}

# A command prefix for the PostgreSQL client tools: empty runs them natively (PG* variables
# apply), e.g. PG_EXEC="docker compose exec -T postgres" runs them inside the postgres container.
pg_tool() {
	local -a prefix=()
	if [[ -n ${PG_EXEC:-} ]]; then
		read -r -a prefix <<<"$PG_EXEC"
	fi
	"${prefix[@]}" "$@"
}

# docker compose with the stack's files. COMPOSE_FILE may name several, separated by ':' as in
# docker compose's own COMPOSE_FILE (docker-compose.yml:docker-compose.override.yml); relative
# ones are under DEPLOY_DIR. Given -f, compose reads no override file by itself: list it here.
compose_file_args() {
	local -a files
	local f
	IFS=: read -r -a files <<<"$COMPOSE_FILE"
	COMPOSE_ARGS=()
	for f in "${files[@]}"; do
		[[ $f == /* ]] || f=$DEPLOY_DIR/$f
		COMPOSE_ARGS+=(-f "$f")
	done
}
compose_files_ok() {
	local -a files
	local f
	IFS=: read -r -a files <<<"$COMPOSE_FILE"
	for f in "${files[@]}"; do
		[[ $f == /* ]] || f=$DEPLOY_DIR/$f
		[[ -f $f ]] || return 1
	done
}
docker_compose() {
	compose_file_args
	docker compose "${COMPOSE_ARGS[@]}" "$@"
}

# Synapse's own tools: natively with SYNAPSE_PYTHON (a python with Synapse installed), otherwise
# in the compose stack's synapse image.
synapse_python() {
	if [[ -n ${SYNAPSE_PYTHON:-} ]]; then
		"$SYNAPSE_PYTHON" "$@"
	else
		require_cmd docker
		compose_files_ok || die "no $COMPOSE_FILE (or set SYNAPSE_PYTHON to run natively)"
		docker_compose run --rm --no-deps -T --entrypoint python synapse "$@"
	fi
}

# Human-readable size, for messages.
human_size() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || printf '%s bytes' "$1"; }
