"""`ssedeploy check INVENTORY`: validate and render every host's nginx config offline.

Nothing connects to a host. Each host's settings are validated and its tree rendered
for `nginx.version` from the settings (default: the oldest supported, 1.18.0), for
OFFLINE_CPUS workers and no fd cap (the deploy sizes from the host's facts). The tree
is linted with gixy-next, where only `proxy_buffering_off` inside a declared SSE
location is accepted, and tested with the local `nginx -t` under a temporary prefix
(stub certificate and mime types, no dynamic modules) when this machine has an nginx
at least as new as the version rendered for; otherwise that step is skipped, saying so.

The app's declared engines.node is judged against the Node its settings give, offline: an
exact version as it is, a line by its lowest release (24 -> 24.0.0; the deploy judges the
release it resolves); for `distro` the host decides at deploy time. An official build is
also resolved on its mirror and its x64 tarball checked against SHASUMS256.txt, as a host
would (arm64 hosts' builds are checked at deploy time); an unreachable mirror skips that,
saying so.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import engines, nextbuild, nginx
from . import node as nodejs
from .inventory import inventory_hosts, inventory_topology, node_mirror
from .settings import Settings, SettingsError, parse
from .topology import private_address, settings_refusals

OFFLINE_CPUS = 2


def write_prefix(root: Path, settings: Settings, files: dict[str, str]) -> Path:
    """The rendered tree under `root`, its absolute paths moved there, stubs for host-only files."""
    for sub in ("sites-enabled", "conf.d", "log", "ssl"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    moves = {"/etc/nginx/": f"{root}/", "/var/log/nginx/": f"{root}/log/", "/run/nginx.pid": f"{root}/nginx.pid",
             nginx.TLS_DIR + "/": f"{root}/ssl/"}
    for rel, text in files.items():
        text = re.sub(r"^include /etc/nginx/modules-enabled/\*\.conf;\n", "", text, flags=re.M)
        for old, new in moves.items():
            text = text.replace(old, new)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, target in nginx.LINKS.items():
        (root / rel).symlink_to(target)
    mime = Path("/etc/nginx/mime.types")
    (root / "mime.types").write_text(mime.read_text() if mime.exists() else "types { text/html html; }\n")
    if settings.site.tls:
        cert, key = (root / "ssl" / Path(p).relative_to(nginx.TLS_DIR) for p in nginx.tls_paths(settings))
        cert.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=check",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return root / nginx.NGINX_CONF


def lint(conf: Path, settings: Settings, dump: bool = False) -> list[str]:
    """gixy-next findings on a rendered tree's nginx.conf, or (`dump`) on a host's `nginx -T` output."""
    gixy = shutil.which("gixy", path=str(Path(sys.executable).parent)) or shutil.which("gixy")
    if not gixy:
        return ["gixy-next is not installed (pip install gixy-next)"]
    out = subprocess.run([gixy, "-f", "json", "-" if dump else str(conf)], capture_output=True, text=True,
                         input=conf.read_text() if dump else None)
    try:
        findings = json.loads(out.stdout or "[]")
    except ValueError:
        return [f"gixy failed: {out.stderr.strip() or out.stdout.strip()}"]
    allowed = {f"location ^~ {p} {{" for p in settings.site.sse_paths}
    problems, seen = [], 0
    for f in findings:
        source = conf if dump else Path(f["file"])  # a dump's findings carry line numbers of the dump
        if f["plugin"] == "proxy_buffering_off" and enclosing_block(source, f.get("line")) in allowed:
            seen += 1  # buffering off is the point of an SSE location, and only there
            continue
        problems.append(f"gixy {f['plugin']} ({f['severity']}) in {Path(f['file']).name}:{f.get('line')}: {f['reason']}")
    if seen < len(allowed):  # gixy skips what it cannot read without failing: make sure it read the SSE locations
        problems.append(f"gixy saw {seen} of {len(allowed)} SSE locations: it did not read the whole config")
    return problems


def enclosing_block(path: Path, lineno: int | None) -> str | None:
    """The opening line of the block that holds line `lineno` of `path`."""
    if not lineno:
        return None
    depth = 0
    for text in reversed(path.read_text().splitlines()[: lineno - 1]):
        depth += text.count("}") - text.count("{")
        if depth < 0:
            return text.strip()
    return None


def local_nginx_test(conf: Path, version: str) -> tuple[list[str], str | None]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not binary:
        return [], "no local nginx: nginx -t skipped"
    local = re.search(r"nginx/(\d+\.\d+\.\d+)", subprocess.run([binary, "-v"], capture_output=True, text=True).stderr)
    if not local or nginx.version_tuple(local.group(1)) < nginx.version_tuple(version):
        return [], f"local nginx {local.group(1) if local else '?'} is older than {version}: nginx -t skipped"
    result = subprocess.run([binary, "-t", "-q", "-p", str(conf.parent), "-c", str(conf)], capture_output=True, text=True)
    return ([f"nginx -t: {result.stderr.strip()}"] if result.returncode else []), None


def build_report(host: str, settings: Settings) -> tuple[list[str], str]:
    """(problems, what was seen) for a Next.js build's SSE routes (ssedeploy/nextbuild.py)."""
    try:
        found = nextbuild.inspect(settings.app.source, settings.site.sse_paths)
    except ValueError as exc:
        return [f"host {host}: app.source: {exc}"], ""
    seen = "; ".join(found.notes) or "Next.js build: every SSE path is served by a dynamic Node.js route handler"
    return [f"host {host}: {text}" for text in found.refusals], seen


@functools.lru_cache(maxsize=None)
def _downloaded(build: nodejs.Build) -> None:
    """Download and check a build once per run, however many hosts use it."""
    with tempfile.TemporaryDirectory(prefix="ssedeploy-check-node-") as tmp:
        nodejs.download(build, Path(tmp) / "node.tar.xz")


def node_build_report(host: str, settings: Settings, data: dict) -> tuple[list[str], str]:
    """(problems, what was seen) for the official build app.node names: resolved on its mirror, its x64
    tarball downloaded and checked against SHASUMS256.txt."""
    spec = settings.app.node
    site = node_mirror(settings, data)
    try:
        build = nodejs.build_for(spec, site, "x64")
        _downloaded(build)
    except nodejs.Unreachable as exc:
        return [], f"Node build not checked ({exc})"
    except nodejs.NodeError as exc:
        return [f"host {host}: app.node = {spec!r}: {exc}"], ""
    return [], f"Node build {build.version} on {site}: SHA-256 matches SHASUMS256.txt"


def node_report(host: str, settings: Settings) -> tuple[list[str], str]:
    """(problems, what was judged) for the app's Node and its declared engines.node, offline."""
    app, spec = settings.app, settings.app.node
    try:
        found = engines.declared(app.source)
    except ValueError as exc:
        return [f"host {host}: app {app.name}: {exc}"], ""
    if found.path is None:
        declared = f"no package.json in {app.source}: engines.node not checked"
    elif found.range is None:
        declared = f"{found.path.name} declares no engines.node: not checked"
    else:
        declared = f"engines.node {found.range!r}"
    version = nodejs.lowest(spec)
    if version is None:
        return [], f"Node: the distro's (the host decides at deploy time); {declared}"
    where = f"app.node = {spec!r}" + (", its lowest release" if nodejs.is_line(spec) else "")
    refusal = engines.refusal(host, app.name, found, version, where)
    if refusal:
        return [refusal], ""
    return [], f"Node {version} ({where}); {declared}{' ok' if found.range else ''}"


def check(inventory_path: str, limit: list[str] | None = None, out=print) -> int:
    hosts = inventory_hosts(inventory_path, limit)
    if not hosts:
        out(f"ssedeploy check: no host in {inventory_path}")
        return 1
    failed = 0
    acme_names: dict[str, list[str]] = {}
    try:
        topo = inventory_topology(inventory_path)
    except ValueError as exc:
        out(str(exc))
        return 1
    # A cluster's layout needs every host, also those --limit leaves out (a proxy renders every app host).
    everyone, limited = dict(inventory_hosts(inventory_path)), {name for name, _ in hosts}
    parsed = {}
    for name, data in everyone.items():
        try:
            parsed[name] = parse(data, name)
        except SettingsError as exc:
            if name in limited:
                out(str(exc))
                failed += 1
    addresses = {n: private_address(parsed[n].nginx.private_address, everyone[n].get("ssh_hostname"))
                 for n in topo.proxies if n in parsed}
    if topo.clustered and len(parsed) == len(everyone):
        lines = settings_refusals(topo, parsed, addresses)
        for line in lines:
            out(line)
        failed += len(lines)
    for name, data in hosts:
        if name not in parsed:
            continue
        settings = parsed[name]
        problems, summary = [], f"app host of the cluster (nginx runs on {', '.join(topo.proxies)})"
        if topo.is_proxy(name):
            if settings.site.tls and settings.site.tls.mode == "acme":
                for server_name in settings.site.server_names:
                    acme_names.setdefault(server_name.lower().rstrip("."), []).append(name)
            version = settings.nginx.version
            lim = nginx.limits(settings, OFFLINE_CPUS, None)
            servers = [nginx.address(parsed[n].app.bind, parsed[n].app.instance_ports[0]) for n in topo.apps
                       if n in parsed] if topo.clustered else None
            peers = [a for p in topo.proxies if p != name and topo.clustered and (a := addresses.get(p))]
            files, revision = nginx.render_tree(settings, version, lim, servers=servers or None, acme_peers=peers)
            with tempfile.TemporaryDirectory(prefix="ssedeploy-check-") as tmp:
                conf = write_prefix(Path(tmp), settings, files)
                problems = lint(conf, settings)
                tested, skipped = local_nginx_test(conf, version)
                problems += tested
            for p in problems:
                out(f"host {name}: {p}")
            if nginx.plain_http_warning(settings):
                out(f"host {name}: {nginx.plain_http_warning(settings)}")
            note = f" ({skipped})" if skipped else ("" if tested else ", nginx -t ok")
            summary = f"nginx {version}, revision {revision}{note}"
        if topo.is_app(name):
            for report in (build_report(name, settings), node_report(name, settings),
                           *([node_build_report(name, settings, data)] if settings.app.node != nodejs.DISTRO else [])):
                for p in report[0]:
                    out(p)
                problems += report[0]
                if report[1]:
                    out(f"host {name}: {report[1]}")
        out(f"host {name}: {'FAILED' if problems else 'ok'}: {summary}")
        failed += bool(problems)
    for server_name, names in acme_names.items():
        # A cluster's proxies share their names: each asks for its own certificate, and the one the CA reaches
        # answers the others' tokens from them (templates/nginx/acme-challenge.conf.j2).
        if len(names) > 1 and not (topo.clustered and set(names) <= set(topo.proxies)):
            out(f"warning: hosts {', '.join(names)} each ask the ACME CA for {server_name}: HTTP-01 reaches only the "
                "host the name points to, so the others' requests fail; give each host its own names, or use "
                "site.tls.mode 'files' with one certificate for all")
    return 1 if failed else 0
