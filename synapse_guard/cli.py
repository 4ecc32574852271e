"""The `synapse-guard` command: operator tools that read Synapse's own configuration.

    synapse-guard render nginx -c homeserver.yaml -c homeserver.d/ [--no-geoip2] [-o FILE]

`-c` takes Synapse's config paths, as many as Synapse is given, in the same order.

Exit status: 0 on success, 1 when the output cannot be written, 2 when the command line or the
configuration is wrong (the message names the file and the key). Each subcommand is one
function taking the parsed arguments and returning the exit status; a new one is one more
`add_parser` call in `build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from synapse_guard import __version__
from synapse_guard.nginx import NginxRenderError, render_nginx
from synapse_guard.synapse_config import GuardEntry, SynapseConfigError, load_guard_entry

PROG = "synapse-guard"
EXIT_OK = 0
EXIT_OUTPUT = 1
EXIT_USAGE = 2  # also argparse's status for a bad command line

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad configuration or arguments: exit status 2, the message on stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Tools for servers protected by the synapse-guard module."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synapse_config = argparse.ArgumentParser(add_help=False)
    synapse_config.add_argument(
        "-c",
        "--config-path",
        dest="config_paths",
        action="append",
        required=True,
        metavar="PATH",
        help="a Synapse config file or directory (of *.yaml files), as given to Synapse; "
        "repeat it in Synapse's order",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (replaced atomically) instead of standard output",
    )

    render = commands.add_parser(
        "render", help="render deployment files from the guard's configuration"
    )
    targets = render.add_subparsers(dest="target", metavar="TARGET", required=True)
    nginx = targets.add_parser(
        "nginx",
        parents=[synapse_config, output],
        help="an nginx include refusing, before Synapse, the addresses the guard refuses",
        description="Render an include for nginx's http {} context that sets "
        "$synapse_guard_refused to 1 for the addresses network: refuses; use it with "
        "`if ($synapse_guard_refused) { return 403; }`.",
    )
    nginx.add_argument(
        "--no-geoip2",
        dest="geoip2",
        action="store_false",
        help="for an nginx without ngx_http_geoip2_module: network.allow_countries is then "
        "left to Synapse, and only deny_cidrs are refused at the edge",
    )
    nginx.set_defaults(handler=_render_nginx)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    handler: Command = args.handler
    try:
        return handler(args)
    except UsageError as e:
        _say(f"error: {e}")
        return EXIT_USAGE


def _render_nginx(args: argparse.Namespace) -> int:
    entry = _load(args.config_paths)
    policy = entry.config.network
    if policy.allow_countries and not args.geoip2:
        _say(
            "warning: network.allow_countries cannot be enforced without the geoip2 module: "
            "addresses outside deny_cidrs are passed to Synapse, which decides"
        )
    try:
        text = render_nginx(
            policy, geoip2=args.geoip2, sources=[os.path.abspath(f) for f in entry.files]
        )
    except NginxRenderError as e:
        raise UsageError(f"{entry.modules_file}: modules[{entry.index}].config.{e}") from None
    return _emit(text, args.output)


def _load(paths: Sequence[str]) -> GuardEntry:
    try:
        entry = load_guard_entry(paths)
    except SynapseConfigError as e:
        raise UsageError(str(e)) from None
    for warning in entry.warnings:
        _say(f"warning: {warning}")
    return entry


def _emit(text: str, output: str | None) -> int:
    if output is None or output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        _write_atomically(Path(output), text)
    except OSError as e:
        _say(f"error: cannot write {output}: {e.strerror or e}")
        return EXIT_OUTPUT
    _say(f"wrote {output}")
    return EXIT_OK


def _write_atomically(path: Path, text: str) -> None:
    """Write a sibling temporary file and rename it over `path`: nginx never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)  # world-readable config, like the files nginx ships
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
