#!/bin/sh
# The official nginx image's template step, as the compose file relies on it: when the
# command is nginx, render every /etc/nginx/templates/*.template into /etc/nginx/conf.d/
# with envsubst, substituting only the environment variables whose names match
# NGINX_ENVSUBST_FILTER (all of them when unset), then exec the command.
set -eu
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
  tdir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
  odir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
  suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
  vars=$(env | cut -d= -f1 | grep -E "${NGINX_ENVSUBST_FILTER:-.}" | sed 's/^/${/; s/$/}/' | tr '\n' ' ')
  for t in "$tdir"/*"$suffix"; do
    [ -f "$t" ] || continue
    out="$odir/$(basename "$t" "$suffix")"
    envsubst "$vars" <"$t" >"$out"
    echo "$0: rendered $t to $out" >&2
  done
fi
exec "$@"
