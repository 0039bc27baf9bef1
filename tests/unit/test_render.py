"""The rendered site, read through crossplane the way nginx reads it."""

import crossplane

from roles.app import unit
from roles.nginx import site_conf
from ssedeploy.settings import parse


def parsed_site(tmp_path, data):
    path = tmp_path / "site.conf"
    path.write_text(site_conf(parse(data))[0])
    result = crossplane.parse(str(path), single=True, check_ctx=False, comments=False)
    assert result["status"] == "ok", result["errors"]
    return result["config"][0]["parsed"]


def public_server(parsed):
    return next(d for d in parsed if d["directive"] == "server" and ["127.0.0.1:8573"] not in
                [c["args"] for c in d["block"] if c["directive"] == "listen"])


def locations(parsed):
    server = public_server(parsed)
    return {" ".join(d["args"]): {c["directive"]: c["args"] for c in d["block"]}
            for d in server["block"] if d["directive"] == "location"}


def test_buffering_is_off_in_sse_locations_only(tmp_path):
    locs = locations(parsed_site(tmp_path, {"site": {"sse_paths": ["/api/stream", "/events"]}}))
    assert set(locs) == {"/", "^~ /api/stream", "^~ /events", "@sse_retry"}
    for path in ("^~ /api/stream", "^~ /events"):
        sse = locs[path]
        assert sse["proxy_buffering"] == ["off"]
        assert sse["proxy_cache"] == ["off"]
        assert sse["gzip"] == ["off"]
        assert sse["proxy_read_timeout"] == ["60s"]
        assert sse["proxy_http_version"] == ["1.1"]
        assert sse["error_page"] == ["502", "503", "504", "=", "@sse_retry"]
    assert "proxy_buffering" not in locs["/"]


def test_sse_location_repeats_forwarding_headers(tmp_path):
    parsed = parsed_site(tmp_path, {})
    server = public_server(parsed)
    sse = next(d for d in server["block"] if d["directive"] == "location" and d["args"] == ["^~", "/api/stream"])
    headers = {c["args"][0]: c["args"][1] for c in sse["block"] if c["directive"] == "proxy_set_header"}
    assert headers == {
        "Connection": "", "Host": "$host", "X-Real-IP": "$remote_addr",
        "X-Forwarded-For": "$proxy_add_x_forwarded_for", "X-Forwarded-Proto": "$scheme",
    }


def test_upstream_and_listen_follow_settings(tmp_path):
    parsed = parsed_site(tmp_path, {"app": {"port": 4000, "name": "web"}, "site": {"listen_port": 8080}})
    upstream = next(d for d in parsed if d["directive"] == "upstream")
    assert upstream["args"] == ["web_upstream"]
    assert ["server", ["127.0.0.1:4000"]] in [[c["directive"], c["args"]] for c in upstream["block"]]
    server = public_server(parsed)
    assert [d["args"] for d in server["block"] if d["directive"] == "listen"] == [["8080"], ["[::]:8080"]]


def test_app_unit_binds_loopback_and_stops_fast():
    text = unit(parse({"app": {"name": "web", "port": 4000}}))
    lines = text.splitlines()
    assert "Environment=HOSTNAME=127.0.0.1" in lines
    assert "Environment=PORT=4000" in lines
    assert "User=web" in lines
    assert "TimeoutStopSec=15" in lines and "KillMode=mixed" in lines
    assert "Restart=always" in lines
    assert not any("MemoryDenyWriteExecute" in line for line in lines)  # V8 needs W+X pages


def test_revision_is_served_on_loopback_only_and_tracks_the_config(tmp_path):
    text, rev = site_conf(parse({}))
    other_text, other_rev = site_conf(parse({"site": {"sse_paths": ["/events"]}}))
    assert rev != other_rev and len(rev) == 16
    parsed = parsed_site(tmp_path, {})
    servers = [d for d in parsed if d["directive"] == "server"]
    revision = next(s for s in servers if s is not public_server(parsed))
    assert [c["args"] for c in revision["block"] if c["directive"] == "listen"] == [["127.0.0.1:8573"]]
    assert f'"{rev}\\n"' in text
