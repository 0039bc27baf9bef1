"""The rendered nginx tree, read through crossplane the way nginx reads it."""

import os
import shutil

import crossplane
import pytest

from roles.app import KEEP_ALIVE_MS, unit
from ssedeploy import nginx
from ssedeploy.settings import Site, parse

LIMITS = nginx.Limits(workers=2, worker_connections=15000, worker_rlimit_nofile=30000, streams=10000)


def parsed(tmp_path, data, version="1.22.1", name=nginx.SITE):
    files, _ = nginx.render_tree(parse(data), version, LIMITS)
    path = tmp_path / name.replace("/", "_")
    path.write_text(files[name])
    result = crossplane.parse(str(path), single=True, check_ctx=False, comments=False)
    assert result["status"] == "ok", result["errors"]
    return result["config"][0]["parsed"]


def args_of(block, directive):
    return [d["args"] for d in block if d["directive"] == directive]


def servers(tree):
    return [d["block"] for d in tree if d["directive"] == "server"]


def public_server(tree):
    """The server that proxies to the app (not the redirect nor the loopback revision)."""
    return next(s for s in servers(tree) if any(d["directive"] == "location" and d["args"] == ["/"]
                                                  and args_of(d["block"], "proxy_pass") for d in s))


def locations(server):
    return {" ".join(d["args"]): {c["directive"]: c["args"] for c in d["block"]}
            for d in server if d["directive"] == "location"}


def test_buffering_is_off_in_sse_locations_only(tmp_path):
    locs = locations(public_server(parsed(tmp_path, {"site": {"sse_paths": ["/api/stream", "/events"]}})))
    assert set(locs) == {"/", "^~ /api/stream", "^~ /events", "@sse_retry"}
    for path in ("^~ /api/stream", "^~ /events"):
        sse = locs[path]
        assert sse["proxy_buffering"] == ["off"]
        assert sse["proxy_cache"] == ["off"]
        assert sse["gzip"] == ["off"]
        assert sse["proxy_read_timeout"] == ["60s"]
        assert sse["proxy_http_version"] == ["1.1"]
        assert sse["error_page"] == ["502", "503", "504", "=", "@sse_retry"]
        assert "proxy_ignore_headers" not in sse  # the app's X-Accel-Buffering is honoured
    assert "proxy_buffering" not in locs["/"]


def test_sse_location_repeats_forwarding_headers_and_asks_for_identity_encoding(tmp_path):
    server = public_server(parsed(tmp_path, {}))
    sse = next(d for d in server if d["directive"] == "location" and d["args"] == ["^~", "/api/stream"])
    headers = [a for a in args_of(sse["block"], "proxy_set_header")]
    assert len(headers) == len({a[0] for a in headers}), "a header set twice"
    assert dict(headers) == nginx.SSE_UPSTREAM_HEADERS
    assert dict(headers)["Accept-Encoding"] == "" and dict(headers)["Host"] == "$host"
    # pages may still be compressed by the app
    assert "Accept-Encoding" not in {a[0] for d in server if d["directive"] == "location" and d["args"] == ["/"]
                                     for a in args_of(d["block"], "proxy_set_header")}


def test_retry_fallback_answers_200_event_stream(tmp_path):
    retry = locations(public_server(parsed(tmp_path, {})))["@sse_retry"]
    assert retry["default_type"] == ["text/event-stream"]
    assert retry["return"][0] == "200" and retry["return"][1].startswith("retry: ")


def test_upstream_and_listen_follow_settings(tmp_path):
    tree = parsed(tmp_path, {"app": {"port": 4000, "name": "web"}, "site": {"listen_port": 8080},
                             "nginx": {"upstream_keepalive": 8}})
    upstream = next(d for d in tree if d["directive"] == "upstream")
    assert upstream["args"] == ["web_upstream"]
    assert args_of(upstream["block"], "server") == [["127.0.0.1:4000"]]
    assert args_of(upstream["block"], "keepalive") == [["8"]]
    assert args_of(public_server(tree), "listen") == [["8080", "default_server", "reuseport"],
                                                      ["[::]:8080", "default_server", "reuseport"]]


@pytest.mark.parametrize("names,tls,default", [
    (["_"], False, True), (["example.com", "_"], True, True), (["example.com"], False, False),
    (["example.com"], True, False),
])
def test_site_is_the_default_server_only_with_server_name_underscore(tmp_path, names, tls, default):
    tree = parsed(tmp_path, {"site": {"server_names": names, **({"tls": {}} if tls else {})}})
    public = [s for s in servers(tree) if args_of(s, "server_name")]  # not the loopback revision server
    assert len(public) == (2 if tls else 1)
    for server in public:
        for listen in args_of(server, "listen"):
            assert ("default_server" in listen) == default, listen
    revision = next(s for s in servers(tree) if not args_of(s, "server_name"))
    assert "default_server" not in args_of(revision, "listen")[0]


def test_revision_is_served_on_loopback_only_and_tracks_the_config(tmp_path):
    _, rev = nginx.render_tree(parse({}), "1.22.1", LIMITS)
    _, other = nginx.render_tree(parse({"site": {"sse_paths": ["/events"]}}), "1.22.1", LIMITS)
    assert rev != other and len(rev) == 16
    revision = next(s for s in servers(parsed(tmp_path, {})) if args_of(s, "listen") == [[f"127.0.0.1:{Site().revision_port}"]])
    assert locations(revision)["= /ssedeploy/revision"]["return"] == ["200", f"{rev}\\n"]
    # ... and which instance the upstream sends to, in the same answer as the revision that says so
    assert locations(revision)["= /ssedeploy/upstream"]["return"] == ["200", f"{rev} 3000\\n"]


@pytest.mark.parametrize("data,port,server", [
    ({}, None, "127.0.0.1:3000"),                                      # the first instance by default
    ({}, 3001, "127.0.0.1:3001"),                                      # a release switched to the second
    ({"app": {"ports": [4100, 4200], "bind": "10.1.2.3"}}, 4200, "10.1.2.3:4200"),
    ({"app": {"bind": "fd00::5"}}, 3001, "[fd00::5]:3001"),
])
def test_the_upstream_sends_to_one_instance_and_each_port_is_its_own_revision(data, port, server):
    settings = parse(data)
    files, rev = nginx.render_tree(settings, "1.22.1", LIMITS, port)
    upstream = [line.strip() for line in files[nginx.SITE].splitlines() if line.strip().startswith("server ") and "{" not in line]
    assert upstream == [f"server {server};"]
    _, other = nginx.render_tree(settings, "1.22.1", LIMITS, settings.app.instance_ports[1 if port in (None, settings.app.instance_ports[0]) else 0])
    assert other != rev


def test_nginx_marks_its_own_fallback_answer(tmp_path):
    retry = next(d["block"] for d in public_server(parsed(tmp_path, {}))
                 if d["directive"] == "location" and d["args"] == ["@sse_retry"])
    assert [nginx.FALLBACK_HEADER, "1", "always"] in args_of(retry, "add_header")


OLD_HTTP2 = ["ssl", "http2", "default_server", "reuseport"]  # `listen ... http2`: up to 1.25.0
NEW_HTTP2 = ["ssl", "default_server", "reuseport"]  # `http2 on;` from 1.25.1 (the listen flag is deprecated)
LISTEN_80 = [["80", "default_server", "reuseport"], ["[::]:80", "default_server", "reuseport"]]


# Every nginx the sandbox distros ship (Ubuntu 22.04: 1.18, Debian 12: 1.22, Ubuntu 24.04: 1.24, Debian 13: 1.26,
# Ubuntu 26.04: 1.28), and both sides of the 1.25.1 change.
@pytest.mark.parametrize("version,listen,http2", [
    ("1.18.0", OLD_HTTP2, []),
    ("1.22.1", OLD_HTTP2, []),
    ("1.24.0", OLD_HTTP2, []),
    ("1.25.0", OLD_HTTP2, []),
    ("1.25.1", NEW_HTTP2, [["on"]]),
    ("1.26.3", NEW_HTTP2, [["on"]]),
    ("1.28.3", NEW_HTTP2, [["on"]]),
])
def test_tls_http2_syntax_follows_the_nginx_version(tmp_path, version, listen, http2):
    tree = parsed(tmp_path, {"site": {"tls": {}}}, version)
    main = public_server(tree)
    assert args_of(main, "listen") == [["443", *listen], ["[::]:443", *listen]]
    assert args_of(main, "http2") == http2
    assert args_of(main, "ssl_certificate") == [["/etc/ssl/ssedeploy/sseapp.crt"]]
    redirect = next(s for s in servers(tree) if s is not main and args_of(s, "return"))
    assert args_of(redirect, "listen") == LISTEN_80


@pytest.mark.parametrize("version", ["1.18.0", "1.22.1", "1.24.0", "1.26.3", "1.28.3"])
def test_plain_http_is_the_same_on_every_nginx_version(tmp_path, version):
    main = public_server(parsed(tmp_path, {}, version))
    assert args_of(main, "listen") == LISTEN_80
    assert not args_of(main, "http2")
    assert parsed(tmp_path, {}, version, nginx.NGINX_CONF) == parsed(tmp_path, {}, "1.22.1", nginx.NGINX_CONF)


def test_http_redirects_everything_to_https_when_tls_is_on(tmp_path):
    tree = parsed(tmp_path, {"site": {"tls": {"port": 8443}}})
    redirect = next(s for s in servers(tree) if args_of(s, "return") and args_of(s, "listen")[0][0] == "80")
    assert args_of(redirect, "return") == [["301", "https://$host:8443$request_uri"]]
    assert not locations(redirect)  # the SSE paths too


def test_nginx_conf_is_sized_and_never_gzips_event_streams(tmp_path):
    tree = parsed(tmp_path, {"nginx": {"worker_shutdown_timeout": 90}}, name=nginx.NGINX_CONF)
    top = {d["directive"]: d for d in tree}
    assert top["worker_rlimit_nofile"]["args"] == ["30000"]
    assert top["worker_shutdown_timeout"]["args"] == ["90s"]
    assert args_of(top["events"]["block"], "worker_connections") == [["15000"]]
    http = top["http"]["block"]
    assert args_of(http, "server_tokens") == [["off"]]
    assert args_of(http, "gzip") == [["on"]]
    gzip_types = [t for a in args_of(http, "gzip_types") for t in a]
    assert "text/event-stream" not in gzip_types and "application/json" in gzip_types


def test_extra_directives_land_where_declared(tmp_path):
    data = {"site": {"extra_directives": ["client_max_body_size 5m;"]},
            "nginx": {"extra_http_directives": ["map $http_upgrade $x {\n    default 1;\n}"]}}
    assert args_of(public_server(parsed(tmp_path, data)), "client_max_body_size") == [["5m"]]
    http = next(d for d in parsed(tmp_path, data, name=nginx.NGINX_CONF) if d["directive"] == "http")["block"]
    assert args_of(http, "map") == [["$http_upgrade", "$x"]]


@pytest.mark.parametrize("streams,cpus,hard,want", [
    (10_000, 2, None, (2, 15000, 30000, 10000)),
    (10_000, 2, 20_000, (3, 10000, 20000, 10000)),  # the fd hard limit caps a worker: one more carries it
    (100_000, 2, 20_000, (8, 10000, 20000, 26666)),  # at most 4 workers per CPU, then fewer streams
    (10_000, 2, 1_000, (8, 500, 1000, 1333)),        # a tiny hard limit wins over the 1024 floor
    (100, 1, None, (1, 1024, 2048, 100)),
    (10_000, 4, 1_048_576, (4, 7500, 15000, 10000)),
])
def test_limits_are_derived_from_expected_streams(streams, cpus, hard, want):
    lim = nginx.limits(parse({"nginx": {"expected_streams": streams}}), cpus, hard)
    assert (lim.workers, lim.worker_connections, lim.worker_rlimit_nofile, lim.streams) == want
    assert lim.worker_rlimit_nofile >= 2 * lim.worker_connections or lim.worker_rlimit_nofile == hard
    assert f"LimitNOFILE={lim.worker_rlimit_nofile}" in nginx.drop_in(lim).splitlines()


def test_app_unit_binds_loopback_stops_fast_and_keeps_secrets_out():
    text = unit(parse({"app": {"name": "web", "port": 4000, "env": {"A": "1"}, "secret_env": ["TOKEN"]}}), 4096)
    lines = text.splitlines()
    assert "Environment=HOSTNAME=127.0.0.1" in lines
    # A template: each instance's port is its instance name, and it runs the release its link names.
    assert "Environment=PORT=%i" in lines and "WorkingDirectory=/srv/web/instances/%i" in lines
    assert "4000" not in text
    assert f"Environment=KEEP_ALIVE_TIMEOUT={KEEP_ALIVE_MS}" in lines and KEEP_ALIVE_MS > 60_000  # nginx's 60 s
    assert "User=web" in lines
    # The Node the instance's release links (the one it was checked with), first on PATH too.
    assert "ExecStart=/srv/web/instances/%i/.ssedeploy-node/bin/node server.js" in lines
    assert "Environment=PATH=/srv/web/instances/%i/.ssedeploy-node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    assert "TimeoutStopSec=15" in lines and "KillMode=mixed" in lines
    assert "Restart=always" in lines and "LimitNOFILE=4096" in lines
    assert "EnvironmentFile=/etc/web/env" in lines and "TOKEN" not in text and "A=1" not in text
    assert "SystemCallFilter=@system-service" in lines and "CapabilityBoundingSet=" in lines
    assert not any("MemoryDenyWriteExecute" in line for line in lines)  # V8 needs W+X pages


@pytest.mark.parametrize("start,command,want", [
    ("standalone", None, "/srv/sseapp/instances/%i/.ssedeploy-node/bin/node server.js"),
    ("next-start", None, "/srv/sseapp/instances/%i/.ssedeploy-node/bin/node node_modules/next/dist/bin/next start "
                         f"-H 127.0.0.1 -p ${{PORT}} --keepAliveTimeout {KEEP_ALIVE_MS}"),
    # A command finds `node` (npm, ...) on the unit's PATH, the release's Node first, through env.
    ("command", "node dist/main.js", "/usr/bin/env node dist/main.js"),
])
def test_app_start_modes(start, command, want):
    """(systemd puts the instance's PORT into ${PORT} from its Environment=.)"""
    app = {"start": start, **({"command": command} if command else {})}
    assert f"ExecStart={want}" in unit(parse({"app": app}), 1024).splitlines()


def test_nginx_drop_in_restarts_after_a_crash_and_carries_the_file_limit():
    text = nginx.drop_in(LIMITS)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["[Service]", "LimitNOFILE=30000", "Restart=on-failure", f"RestartSec={nginx.RESTART_SECONDS}"]


DUMP = """# configuration file /etc/nginx/nginx.conf:
http {
    include /etc/nginx/sites-enabled/*;
}

# configuration file /etc/nginx/sites-enabled/other:
server {
    listen 80 default_server;
    listen [::]:80 default_server ipv6only=on;
    server_name other.example;
}
server { listen 10.0.0.1:8080 default; }
server { listen 443 ssl; listen unix:/run/x.sock default_server; }

# configuration file /etc/nginx/sites-enabled/ssedeploy.conf:
server {
    listen 80 default_server reuseport;
    location ^~ /a { return 200 "x;}"; }
}

# configuration file /etc/nginx/sites-enabled/default:
server { listen 80 default_server; }
"""


def test_default_listens_reads_every_file_of_an_nginx_T_dump():
    assert nginx.default_listens(DUMP) == [
        ("/etc/nginx/sites-enabled/other", 80, "listen 80 default_server"),
        ("/etc/nginx/sites-enabled/other", 80, "listen [::]:80 default_server ipv6only=on"),
        ("/etc/nginx/sites-enabled/other", 8080, "listen 10.0.0.1:8080 default"),
        ("/etc/nginx/sites-enabled/ssedeploy.conf", 80, "listen 80 default_server reuseport"),
        ("/etc/nginx/sites-enabled/default", 80, "listen 80 default_server"),
    ]


@pytest.mark.parametrize("address,port", [
    ("80", 80), ("*:8080", 8080), ("[::]:443", 443), ("[::1]", 80), ("10.0.0.1", 80), ("10.0.0.1:81", 81),
    ("localhost:8000", 8000), ("unix:/run/x.sock", None),
])
def test_listen_port(address, port):
    assert nginx.listen_port(address) == port


@pytest.mark.parametrize("data,want", [
    ({}, ["/etc/nginx/sites-enabled/other: listen 80 default_server",
          "/etc/nginx/sites-enabled/other: listen [::]:80 default_server ipv6only=on"]),
    ({"site": {"listen_port": 8080}}, ["/etc/nginx/sites-enabled/other: listen 10.0.0.1:8080 default"]),
    ({"site": {"listen_port": 8081}}, []),
    ({"site": {"server_names": ["example.com"]}}, []),  # not the default server: others may be
    ({"site": {"listen_port": 8081, "tls": {"port": 8080}}}, ["/etc/nginx/sites-enabled/other: listen 10.0.0.1:8080 default"]),
])
def test_foreign_default_servers(data, want):
    assert nginx.foreign_default_servers(nginx.default_listens(DUMP), parse(data)) == want


# -- a cluster's proxy: every app host in the upstream ----------------------------------------------------

CLUSTER_SERVERS = [nginx.address("10.0.0.11", 3000), nginx.address("fd00::12", 3001), nginx.address("10.0.0.13", 3000)]


def cluster_tree(data, servers=CLUSTER_SERVERS, version="1.22.1"):
    """(the site file parsed as nginx reads it, the revision) of a proxy whose upstream is SERVERS."""
    files, revision = nginx.render_tree(parse(data), version, LIMITS, servers=servers)
    return nginx.parse_dump(files[nginx.SITE]), revision


def upstream_block(tree):
    (upstream,) = [d for d in tree if d["directive"] == "upstream"]
    return upstream["block"]


def test_a_cluster_proxys_upstream_balances_every_app_host_by_least_conn():
    tree, _ = cluster_tree({"app": {"name": "web"}, "nginx": {"upstream_keepalive": 12}})
    (upstream,) = [d for d in tree if d["directive"] == "upstream"]
    assert upstream["args"] == ["web_upstream"]
    assert [d["directive"] for d in upstream["block"]] == ["least_conn", "zone", "server", "server", "server", "keepalive"]
    assert args_of(upstream["block"], "least_conn") == [[]]
    assert args_of(upstream["block"], "zone") == [["web_upstream", "64k"]]  # one count of streams per proxy
    # IPv6 in brackets, each at the port its host serves at
    assert args_of(upstream["block"], "server") == [["10.0.0.11:3000"], ["[fd00::12]:3001"], ["10.0.0.13:3000"]]
    assert args_of(upstream["block"], "keepalive") == [["12"]]


@pytest.mark.parametrize("data,server", [
    ({}, "127.0.0.1:3000"),
    ({"app": {"bind": "10.1.2.3", "ports": [4100, 4200]}}, "10.1.2.3:4100"),
    ({"app": {"bind": "fd00::5"}}, "[fd00::5]:3000"),
])
def test_a_single_hosts_upstream_is_its_own_app_without_least_conn(data, server):
    files, _ = nginx.render_tree(parse(data), "1.22.1", LIMITS)
    block = upstream_block(nginx.parse_dump(files[nginx.SITE]))
    assert not args_of(block, "least_conn")
    assert args_of(block, "server") == [[server]]
    assert args_of(block, "keepalive") == [[str(parse(data).nginx.upstream_keepalive)]]


@pytest.mark.parametrize("servers", [None, CLUSTER_SERVERS])
@pytest.mark.parametrize("tls", [False, True])
def test_every_sse_location_tries_the_next_app_and_the_site_gives_up_connecting_soon(servers, tls):
    data = {"site": {"sse_paths": ["/api/stream", "/events"], **({"tls": {}} if tls else {})}}
    files, _ = nginx.render_tree(parse(data), "1.22.1", LIMITS, servers=servers)
    main = public_server(nginx.parse_dump(files[nginx.SITE]))
    locs = locations(main)
    for path in ("^~ /api/stream", "^~ /events"):
        assert locs[path]["proxy_next_upstream"] == ["error", "timeout"], path
    assert args_of(main, "proxy_connect_timeout") == [[f"{nginx.CONNECT_TIMEOUT}s"]]
    assert 0 < nginx.CONNECT_TIMEOUT < 60  # shorter than nginx's default


def test_a_cluster_proxys_revision_server_names_every_app_host_it_sends_to():
    tree, revision = cluster_tree({})
    rev_server = next(s for s in servers(tree) if args_of(s, "listen") == [[f"127.0.0.1:{Site().revision_port}"]])
    assert locations(rev_server)["= /ssedeploy/revision"]["return"] == ["200", f"{revision}\\n"]
    assert locations(rev_server)["= /ssedeploy/upstream"]["return"] == [
        "200", f"{revision} 10.0.0.11:3000 [fd00::12]:3001 10.0.0.13:3000\\n"]


def test_a_cluster_proxys_revision_follows_each_app_hosts_port():
    _, revision = cluster_tree({})
    _, moved = cluster_tree({}, servers=[CLUSTER_SERVERS[0], nginx.address("fd00::12", 3000), CLUSTER_SERVERS[2]])
    _, again = cluster_tree({})
    _, single = nginx.render_tree(parse({}), "1.22.1", LIMITS)
    assert revision == again and len({revision, moved, single}) == 3


@pytest.mark.skipif(not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"), reason="needs a local nginx")
def test_nginx_itself_accepts_a_cluster_proxys_tree(tmp_path):
    from ssedeploy.check import local_nginx_test, write_prefix

    settings = parse({"site": {"tls": {}}})
    files, _ = nginx.render_tree(settings, "1.18.0", LIMITS, servers=CLUSTER_SERVERS)
    conf = write_prefix(tmp_path, settings, files)
    problems, skipped = local_nginx_test(conf, "1.18.0")
    assert problems == [] and skipped is None


ACME = {"site": {"server_names": ["shop.example.org"], "tls": {"mode": "acme", "email": "ops@example.org"}}}


def locations(tree) -> dict[str, dict]:
    return {" ".join(d["args"]): {c["directive"]: c["args"] for c in d["block"]}
            for d, _ in nginx.walk(tree) if d["directive"] == "location"}


def test_a_cluster_proxy_asks_the_other_proxies_for_a_token_it_does_not_hold():
    files, _ = nginx.render_tree(parse(ACME), "1.22.1", LIMITS, servers=CLUSTER_SERVERS,
                                 acme_peers=["10.0.0.2", "fd00::3"])
    tree = nginx.parse_dump(files[nginx.SITE])
    (peers,) = [d for d in tree if d["directive"] == "upstream" and d["args"] == ["sseapp_upstream_acme_peers"]]
    assert args_of(peers["block"], "server") == [["10.0.0.2:80"], ["[fd00::3]:80"]]
    found = locations(tree)
    assert found[f"^~ {nginx.ACME_CHALLENGE_PATH}"]["error_page"] == ["404", "=", "@acme_peers"]
    # A peer's request is answered from its own tokens only: no location it reaches forwards again.
    assert found[f"^~ {nginx.ACME_PEER_PATH}"]["alias"] == [f"{nginx.ACME_WEBROOT}{nginx.ACME_CHALLENGE_PATH}"]
    assert "proxy_pass" not in found[f"^~ {nginx.ACME_PEER_PATH}"] and "error_page" not in found[f"^~ {nginx.ACME_PEER_PATH}"]
    forward = found["@acme_peers"]
    assert forward["proxy_pass"] == ["http://sseapp_upstream_acme_peers"]
    assert forward["rewrite"][1] == f"{nginx.ACME_PEER_PATH}$1" and forward["proxy_next_upstream"][-1] == "http_404"


@pytest.mark.parametrize("data,servers,peers", [
    (ACME, None, []),                                     # one whole host: its own tokens only
    (ACME, CLUSTER_SERVERS, []),                          # the cluster's only proxy
    ({}, CLUSTER_SERVERS, ["10.0.0.2"]),                  # no ACME: peers do not matter
])
def test_without_other_proxies_or_acme_nothing_is_asked_of_peers(data, servers, peers):
    files, _ = nginx.render_tree(parse(data), "1.22.1", LIMITS, servers=servers, acme_peers=peers)
    text = files[nginx.SITE]
    assert "@acme_peers" not in text and nginx.ACME_PEER_PATH not in text and "acme_peers" not in text


@pytest.mark.skipif(not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"), reason="needs a local nginx")
def test_nginx_and_gixy_accept_a_cluster_proxys_acme_tree(tmp_path):
    from ssedeploy.check import lint, local_nginx_test, write_prefix

    settings = parse(ACME)
    files, _ = nginx.render_tree(settings, "1.18.0", LIMITS, servers=CLUSTER_SERVERS, acme_peers=["10.0.0.2"])
    conf = write_prefix(tmp_path, settings, files)
    problems, skipped = local_nginx_test(conf, "1.18.0")
    assert problems == [] and skipped is None
    assert lint(conf, settings) == []
