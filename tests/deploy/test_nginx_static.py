"""The deploy's nginx configuration (deploy/nginx/), checked without serving a request.

The files are laid out as the official nginx image would see them, in a temporary directory
standing in for the container's filesystem: nginx.conf as is, conf.d/matrix.conf rendered from
its `${MATRIX_*}` placeholders as the image's envsubst step does, the guard's policy rendered by
`synapse-guard render nginx`, and a certificate from a test CA made with openssl. Absolute
container paths (/etc, /var, /usr, /run) are moved into that directory; nothing else changes.
Then `nginx -t` must accept it without a warning, gixy-ng must find nothing, and the hardening
the design relies on is asserted on the parsed configuration.

`render_site` and `make_pki` are shared with test_nginx_e2e.py, which serves the same files.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from synapse_guard.cli.main import main as synapse_guard_cli
from tests.integration.conftest import require
from tests.integration.harness import HOMESERVER_D, REPO, guard_config_from_fragments

NGINX_DIR = REPO / "deploy" / "nginx"
MAIN_CONF = NGINX_DIR / "nginx.conf"
TEMPLATE = NGINX_DIR / "conf.d" / "matrix.conf"  # /etc/nginx/templates/matrix.conf.template
API_INCLUDE = NGINX_DIR / "matrix-api.conf"  # /etc/nginx/matrix-api.conf, as is
ELEMENT_CONFIG = REPO / "deploy" / "element" / "config.json"

MATRIX_DOMAIN = "matrix.test"
ELEMENT_DOMAIN = "element.test"
# The placeholders matrix.conf documents, with test values.
VARIABLES = {
    "MATRIX_DOMAIN": MATRIX_DOMAIN,
    "MATRIX_ELEMENT_DOMAIN": ELEMENT_DOMAIN,
    "MATRIX_SYNAPSE_UPSTREAM": "127.0.0.1:8008",
    "MATRIX_ADMIN_CIDR": "10.8.0.0/24",
    "MATRIX_MAX_UPLOAD_SIZE": "50M",
    "MATRIX_REJECT_NO_SNI": "on",
}
HSTS = "Strict-Transport-Security"
# Container paths in directive arguments: the only thing moved into the test directory.
CONTAINER_PATH = re.compile(r'(?<=[\s"])/(?:etc|var|usr|run)/[^\s;"]*')
# Paths nginx compiles in (Debian: /var/lib/nginx/...): kept inside the test directory too.
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
    if found is None:
        require("nginx is not installed (scripts/install-system-deps installs it)")
    assert found is not None
    return found


def tool(name: str, hint: str) -> str:
    """A command from the test virtualenv or PATH."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if found is None:
        require(f"{name} is not installed ({hint})")
    assert found is not None
    return found


# --------------------------------------------------------------------------------------------
# A test PKI: a CA and a server certificate for both names, made with openssl.


@dataclass(frozen=True)
class PKI:
    ca: Path  # the CA certificate clients verify against
    fullchain: Path  # the server certificate, then the CA's (what certbot's fullchain.pem holds)
    key: Path


def make_pki(directory: Path, names: Sequence[str] = (MATRIX_DOMAIN, ELEMENT_DOMAIN)) -> PKI:
    openssl = tool("openssl", "apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(
            [openssl, *args], check=True, capture_output=True, text=True, timeout=60, cwd=directory
        )

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=synapse-guard test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={names[0]}")
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        f"subjectAltName={','.join(f'DNS:{n}' for n in names)}\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )  # fmt: skip
    fullchain = directory / "fullchain.pem"
    fullchain.write_text(
        (directory / "server.pem").read_text() + (directory / "ca.pem").read_text()
    )
    return PKI(ca=directory / "ca.pem", fullchain=fullchain, key=directory / "server.key")


# --------------------------------------------------------------------------------------------
# The container's view, in a temporary directory.


def envsubst(text: str, variables: Mapping[str, str]) -> str:
    """The image's template step with NGINX_ENVSUBST_FILTER=^MATRIX_: defined names only."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(MATRIX_\w+)\}|\$(MATRIX_\w+)", replace, text)


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", text))


def render_guard_include(directory: Path, config_paths: Sequence[str | Path]) -> Path:
    """`synapse-guard render nginx` over Synapse's config files, as an operator runs it."""
    include = directory / "synapse-guard.conf"
    args = ["render", "nginx", *(a for p in config_paths for a in ("-c", str(p))), "-o"]
    assert synapse_guard_cli([*args, str(include)]) == 0
    return include


def sample_guard_include(directory: Path, network: Mapping[str, object]) -> Path:
    """The include for homeserver.d/ with the guard's `network:` replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "homeserver.yaml").write_text(
        yaml.safe_dump({"server_name": MATRIX_DOMAIN, "report_stats": False})
    )
    fragments = directory / "homeserver.d"
    shutil.copytree(HOMESERVER_D, fragments)
    guard = {**guard_config_from_fragments(), "network": dict(network)}
    (fragments / "90-modules.yaml").write_text(
        yaml.safe_dump({"modules": [{"module": "synapse_guard.Guard", "config": guard}]})
    )
    return render_guard_include(directory, [directory / "homeserver.yaml", fragments])


@dataclass
class Site:
    """The rendered files; `root` stands for the container's `/`."""

    directory: Path
    root: Path
    conf: Path
    error_log: Path
    files: dict[str, str] = field(default_factory=dict)  # container path -> rendered text

    def host_path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def command(self, nginx: str, *extra: str) -> list[str]:
        return [
            nginx, "-p", f"{self.directory}/", "-c", str(self.conf), "-e", str(self.error_log),
            *extra,
        ]  # fmt: skip


def _move_paths(text: str, root: Path) -> str:
    return CONTAINER_PATH.sub(lambda m: f"{root}{m.group(0)}", text)


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in the deploy's nginx.conf"
    return text.replace(old, new)


def render_site(
    directory: Path,
    pki: PKI,
    guard_include: Path,
    variables: Mapping[str, str] = VARIABLES,
    listen: Mapping[int, str] | None = None,
    element_files: Mapping[str, bytes] | None = None,
) -> Site:
    """Lay the deploy's files out under `directory/root` as the container would see them.

    `listen` maps the deploy's ports (80, 443) to test addresses (`127.0.0.1:PORT`).
    """
    root = directory / "root"
    site = Site(
        directory=directory,
        root=root,
        conf=root / "etc/nginx/nginx.conf",
        error_log=directory / "error.log",
    )

    main = MAIN_CONF.read_text()
    # Test-only changes to the main file: who the workers run as, and where the temporary
    # files and the lock go (http-level directives cannot be given with -g).
    user = "user root root;" if os.geteuid() == 0 else ""  # non-root: no switch, no warning
    main = _replace_once(main, "\nuser nginx;", f"\n{user}")
    temp = "".join(f"    {n}_temp_path {directory}/{n};\n" for n in TEMP_PATHS)
    main = _replace_once(
        main, "\nhttp {\n", f"\nlock_file {directory}/nginx.lock;\nhttp {{\n{temp}"
    )
    main = _move_paths(main, root)

    matrix = envsubst(TEMPLATE.read_text(), variables)
    for port, address in (listen or {}).items():
        matrix, count = re.subn(rf"(?m)^(\s*listen) {port}\b", rf"\1 {address}", matrix)
        assert count, f"no `listen {port}` in {TEMPLATE}"
    matrix = _move_paths(matrix, root)

    # The client API's locations, included by matrix.conf (and onion.conf): no placeholders.
    api = _move_paths(API_INCLUDE.read_text(), root)
    site.files = {
        "/etc/nginx/nginx.conf": main,
        "/etc/nginx/conf.d/matrix.conf": matrix,
        "/etc/nginx/matrix-api.conf": api,
    }
    for path, text in site.files.items():
        site.host_path(path).parent.mkdir(parents=True, exist_ok=True)
        site.host_path(path).write_text(text)
    mime = Path("/etc/nginx/mime.types")
    site.host_path("/etc/nginx/mime.types").write_text(
        mime.read_text() if mime.exists() else "types { text/html html; }\n"
    )
    shutil.copyfile(guard_include, site.host_path("/etc/nginx/synapse-guard.conf"))

    live = site.host_path(f"/etc/letsencrypt/live/{variables['MATRIX_DOMAIN']}")
    live.mkdir(parents=True)
    shutil.copyfile(pki.fullchain, live / "fullchain.pem")
    shutil.copyfile(pki.key, live / "privkey.pem")

    (site.host_path("/var/www/acme") / ".well-known/acme-challenge").mkdir(parents=True)
    element = site.host_path("/usr/share/nginx/element")
    element.mkdir(parents=True)
    for name, content in (element_files or {}).items():
        (element / name).parent.mkdir(parents=True, exist_ok=True)
        (element / name).write_bytes(content)
    for container_dir in ("/var/log/nginx", "/var/run", "/var/cache/nginx"):
        site.host_path(container_dir).mkdir(parents=True, exist_ok=True)
    for name in TEMP_PATHS:
        (directory / name).mkdir(exist_ok=True)
    return site


def nginx_test(nginx: str, site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        site.command(nginx, "-t"), capture_output=True, text=True, timeout=60, check=False
    )


# --------------------------------------------------------------------------------------------
# A small nginx parser (enough for these files: words, quoted strings, blocks, comments).


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None
    source: str = ""

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def walk(self) -> Iterator[Directive]:
        for child in self.block or []:
            yield child
            yield from child.walk()


_TOKEN = re.compile(r"""\s+|#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};"'#]+""")


def _tokens(text: str) -> Iterator[str]:
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match, f"cannot tokenize at {text[position : position + 40]!r}"
        position = match.end()
        token = match.group(0)
        if token.isspace() or token.startswith("#"):
            continue
        if token[0] in "\"'":
            token = re.sub(r"\\(.)", r"\1", token[1:-1])
        yield token


def parse(text: str, source: str = "") -> list[Directive]:
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in _tokens(text):
        if token == ";":
            stack[-1].append(Directive(words[0], words[1:], source=source))
            words = []
        elif token == "{":
            directive = Directive(words[0], words[1:], [], source=source)
            stack[-1].append(directive)
            stack.append(directive.block)  # type: ignore[arg-type]
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words} in {source}"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1, f"unbalanced braces in {source}"
    assert not words, f"unterminated directive {words} in {source}"
    return stack[0]


def load(path: Path) -> list[Directive]:
    """Parse a file with its includes expanded in place (absolute paths, globs)."""
    return _expand(parse(path.read_text(), str(path)))


def _expand(block: list[Directive]) -> list[Directive]:
    out: list[Directive] = []
    for directive in block:
        if directive.name == "include":
            for included in sorted(glob.glob(directive.args[0])):
                out += load(Path(included))
        else:
            if directive.block is not None:
                directive.block = _expand(directive.block)
            out.append(directive)
    return out


def http_block(tree: list[Directive]) -> Directive:
    (http,) = [d for d in tree if d.name == "http"]
    return http


def servers(tree: list[Directive]) -> list[Directive]:
    return http_block(tree).children("server")


def is_tls(server: Directive) -> bool:
    return any("ssl" in d.args for d in server.children("listen"))


def rejects_handshake(server: Directive) -> bool:
    return any(d.args == ["on"] for d in server.children("ssl_reject_handshake"))


def server_names(server: Directive) -> list[str]:
    return [name for d in server.children("server_name") for name in d.args]


def server_named(tree: list[Directive], name: str) -> Directive:
    (server,) = [s for s in servers(tree) if name in server_names(s) and is_tls(s)]
    return server


def header_names(block: Directive) -> list[str]:
    return [d.args[0].lower() for d in block.children("add_header")]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def nginx() -> str:
    return nginx_binary()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    directory = tmp_path_factory.mktemp("nginx-static")
    pki = make_pki(directory / "pki")
    # A realistic policy: the team's VPN allowed, one address inside it denied.
    include = sample_guard_include(
        directory / "synapse", {"allow_cidrs": ["10.8.0.0/24"], "deny_cidrs": ["10.8.0.66/32"]}
    )
    return render_site(directory, pki, include)


@pytest.fixture(scope="module")
def tree(site: Site) -> list[Directive]:
    return load(site.conf)


# --------------------------------------------------------------------------------------------
# The files as shipped


def deploy_files() -> list[Path]:
    return sorted(p for p in NGINX_DIR.rglob("*") if p.is_file())


def test_every_placeholder_is_documented_and_rendered(site: Site) -> None:
    template = TEMPLATE.read_text()
    used = placeholders(template)
    assert used == set(VARIABLES), "the test values must cover exactly the template's placeholders"
    header = template.split("\n\n", 1)[0]  # the comment block at the top
    for name in used:
        assert f"#   {name} " in header, f"{name} is not documented in {TEMPLATE.name}'s header"
    # nginx.conf is not a template: the image uses it as is.
    assert not placeholders(MAIN_CONF.read_text())
    for text in site.files.values():
        assert not placeholders(text)


def test_x_forwarded_for_is_never_appended() -> None:
    # $proxy_add_x_forwarded_for keeps the client's own header first, and Synapse believes the
    # first entry: a client could choose the address the guard judges. gixy does not flag it.
    for path in deploy_files():
        assert "proxy_add_x_forwarded_for" not in path.read_text(), path


def test_nginx_t_accepts_the_rendered_configuration(nginx: str, site: Site) -> None:
    result = nginx_test(nginx, site)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test is successful" in output
    assert "[warn]" not in output, output


# Findings accepted after review; each says why. Empty: gixy-ng reports nothing.
GIXY_ALLOWLIST: dict[str, str] = {}


def test_gixy_reports_no_issue(site: Site) -> None:
    gixy = tool("gixy", "pip install gixy-ng, in the test extras")
    result = subprocess.run(
        [gixy, "-f", "json", str(site.conf)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    issues = json.loads(result.stdout)
    unexpected = [i for i in issues if i.get("plugin") not in GIXY_ALLOWLIST]
    assert not unexpected, json.dumps(unexpected, indent=2)


# --------------------------------------------------------------------------------------------
# Hardening, asserted on the parsed configuration


def test_tls_protocols_and_ciphers(tree: list[Directive]) -> None:
    http = http_block(tree)
    protocols = [d for d in http.walk() if d.name == "ssl_protocols"]
    assert protocols
    assert all(sorted(d.args) == ["TLSv1.2", "TLSv1.3"] for d in protocols)
    (ciphers,) = http.children("ssl_ciphers")
    suites = ciphers.args[0].split(":")
    assert all(s.startswith("ECDHE-") and ("GCM" in s or "CHACHA20" in s) for s in suites)
    assert http.children("ssl_session_tickets")[0].args == ["off"]
    assert http.children("ssl_stapling")[0].args == ["off"]


def test_server_tokens_off(tree: list[Directive]) -> None:
    values = [d.args for d in http_block(tree).walk() if d.name == "server_tokens"]
    assert values == [["off"]]


def test_hsts_in_every_tls_server_and_location_with_its_own_headers(
    tree: list[Directive],
) -> None:
    checked = 0
    for server in servers(tree):
        if not is_tls(server) or rejects_handshake(server):
            continue  # a refused handshake sends no HTTP response at all
        checked += 1
        blocks = [server, *(d for d in server.walk() if d.name in ("location", "if"))]
        for block in blocks:
            headers = block.children("add_header")
            if not headers:
                continue  # inherits the server's
            (hsts,) = [h for h in headers if h.args[0] == HSTS]
            assert "includeSubDomains" in hsts.args[1]
            assert int(re.search(r"max-age=(\d+)", hsts.args[1]).group(1)) >= 31536000  # type: ignore[union-attr]
            assert hsts.args[-1] == "always", "also on error responses (403, 404, 429)"
    assert checked == 2


def test_only_tls_servers_answer_http(tree: list[Directive]) -> None:
    for server in servers(tree):
        if is_tls(server):
            continue
        if "_" in server_names(server):
            assert server.children("return")[0].args == ["444"]
            continue
        locations = {tuple(d.args): d for d in server.children("location")}
        assert locations[("/",)].children("return")[0].args == ["301", "https://$host$request_uri"]
        acme = locations[("^~", "/.well-known/acme-challenge/")]
        assert acme.children("root")[0].args[0].endswith("/var/www/acme")


def test_synapse_gets_the_peer_address_only(tree: list[Directive]) -> None:
    matrix = server_named(tree, MATRIX_DOMAIN)
    headers = {d.args[0].lower(): d.args[1] for d in matrix.children("proxy_set_header")}
    assert headers["x-forwarded-for"] == "$remote_addr"
    assert headers["x-forwarded-proto"] == "$scheme"
    # A location with its own proxy_set_header would drop the server's: there is none.
    for directive in matrix.walk():
        if directive.name == "location":
            assert not directive.children("proxy_set_header"), directive.args


def test_every_proxied_location_applies_the_guard_policy(tree: list[Directive]) -> None:
    matrix = server_named(tree, MATRIX_DOMAIN)
    proxied = [loc for loc in matrix.children("location") if loc.children("proxy_pass")]
    assert len(proxied) >= 5
    for location in proxied:
        # The admin variable includes the guard's verdict (next test): the admin API and the
        # guard's own admin endpoints.
        admin_paths = ("/_synapse/admin/", "/_synapse/client/synapse_guard/")
        is_admin = any(path in location.args for path in admin_paths)
        variable = "$matrix_admin_refused" if is_admin else None
        guards = [
            d
            for d in location.children("if")
            if d.args == [f"({variable or '$synapse_guard_refused'})"]
        ]
        assert len(guards) == 1, location.args
        assert [(d.name, d.args) for d in guards[0].block or []] == [("return", ["403"])]
    element = server_named(tree, ELEMENT_DOMAIN)
    (root,) = element.children("location")
    assert root.children("if")[0].args == ["($synapse_guard_refused)"]


def test_federation_and_discovery_are_closed(tree: list[Directive]) -> None:
    matrix = server_named(tree, MATRIX_DOMAIN)
    locations = {tuple(d.args): d for d in matrix.children("location")}
    for key in (
        ("^~", "/_matrix/federation/"),
        ("^~", "/_matrix/key/"),
        ("=", "/.well-known/matrix/server"),
        ("^~", "/_synapse/client/synapse_guard/alerts"),  # Alertmanager's, internal only
        ("/",),
    ):
        assert locations[key].children("return")[0].args == ["404"], key


def test_client_discovery_names_only_this_homeserver(tree: list[Directive]) -> None:
    matrix = server_named(tree, MATRIX_DOMAIN)
    locations = {tuple(d.args): d for d in matrix.children("location")}
    discovery = locations[("=", "/.well-known/matrix/client")]
    guard, answer = [d for d in discovery.block or [] if d.name in ("if", "return")]
    assert guard.args == ["($synapse_guard_refused)"]
    assert [(d.name, d.args) for d in guard.block or []] == [("return", ["403"])]
    assert answer.args[0] == "200"
    # Only the homeserver's URL: no identity server, no sliding sync proxy.
    assert json.loads(answer.args[1]) == {"m.homeserver": {"base_url": f"https://{MATRIX_DOMAIN}"}}
    assert discovery.children("default_type")[0].args == ["application/json"]
    headers = {d.args[0]: d.args[1] for d in discovery.children("add_header")}
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert set(header_names(discovery)) >= set(header_names(matrix))


def test_admin_api_only_from_the_vpn_and_loopback(tree: list[Directive]) -> None:
    matrix = server_named(tree, MATRIX_DOMAIN)
    (admin,) = [loc for loc in matrix.children("location") if loc.args == ["/_synapse/admin/"]]
    assert admin.children("if")[0].args == ["($matrix_admin_refused)"]
    http = http_block(tree)
    (network,) = [d for d in http.children("geo") if d.args == ["$matrix_admin_network"]]
    assert [(d.name, *d.args) for d in network.block or []] == [
        ("default", "0"),
        ("127.0.0.1/32", "1"),
        ("::1/128", "1"),
        (VARIABLES["MATRIX_ADMIN_CIDR"], "1"),
    ]
    (verdict,) = [d for d in http.children("map") if d.args[-1] == "$matrix_admin_refused"]
    assert verdict.args[0] == "$matrix_admin_network:$synapse_guard_refused"
    # Accepted only when in the network (1) and not refused by the guard (0).
    assert [(d.name, *d.args) for d in verdict.block or []] == [("1:0", "0"), ("default", "1")]


def test_login_and_register_are_rate_limited(tree: list[Directive]) -> None:
    http = http_block(tree)
    assert http.children("limit_req_status")[0].args == ["429"]
    matrix = server_named(tree, MATRIX_DOMAIN)
    limited = {
        loc.args[-1]: loc.children("limit_req")[0].args[0]
        for loc in matrix.children("location")
        if loc.children("limit_req")
    }
    assert limited == {
        r"^/_matrix/client/[^/]+/login(?:/|$)": "zone=matrix_login",
        r"^/_matrix/client/[^/]+/register(?:/|$)": "zone=matrix_register",
    }


def test_only_the_login_location_writes_an_access_log(tree: list[Directive]) -> None:
    http = http_block(tree)
    logs = [d for d in http.walk() if d.name == "access_log" and d.args != ["off"]]
    (login_log,) = logs
    path, log_format, condition = login_log.args
    assert path.endswith("/var/log/nginx/login.log")
    assert log_format == "guard_login"
    assert condition == "if=$guard_login_failed"
    assert http.children("access_log")[0].args == ["off"]
    (fmt,) = [d for d in http.children("log_format") if d.args[0] == "guard_login"]
    # Time, client address, status, path without query string; nothing else.
    assert fmt.args[1:] == ["$time_iso8601 $remote_addr $status $uri"]


def test_upload_limit_and_element_headers(tree: list[Directive]) -> None:
    matrix = server_named(tree, MATRIX_DOMAIN)
    assert matrix.children("client_max_body_size")[0].args == [VARIABLES["MATRIX_MAX_UPLOAD_SIZE"]]
    element = server_named(tree, ELEMENT_DOMAIN)
    headers = {d.args[0].lower(): d.args[1] for d in element.children("add_header")}
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert f"connect-src 'self' https://{MATRIX_DOMAIN}" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert "geolocation=()" in headers["permissions-policy"]
    assert headers["x-frame-options"] == "DENY"
