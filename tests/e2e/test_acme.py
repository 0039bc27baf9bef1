"""ACME certificates from the sandbox instance's own CA (pebble), the sandbox's default site (HTTPS):

on Debian 12 and Ubuntu 24.04 hosts the first deploy serves plain HTTP with the HTTP-01 challenge, gets a
certificate, then puts the TLS server live through the validated swap; HTTP/2 carries more than six streams on
one connection; verify checks the chain, names and days left; a re-run asks the CA for nothing. On Debian 12:
a renewal (certbot's own, through ssedeploy's hook) while 100 clients stream over HTTPS; a name that does not
point at the host and a CA that cannot be reached fail the run, clearly, with the site untouched; drift names
what a deploy would ask the CA for.

Instances `e2e-acme` (Debian 12) and `e2e-acmeu` (Ubuntu 24.04).
"""

from __future__ import annotations

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import pytest

from roles import nginx as role
from ssedeploy.acme import DIRECTORY_CA
from ssedeploy.nginx import ACME_CHALLENGE_PATH, REVISION_PATH, acme_dir
from ssedeploy.sandbox import acme as ca
from ssedeploy.settings import parse
from ssedeploy.sse import _Blocks

from .eventsource import Fleet, id_holes
from .helpers import HTTPS_ON, booted, deploy_with, host_of, pyinfra_deploy, ssedeploy, write_inventory
from .polling import wait_until

DISTROS = {"debian12": "e2e-acme", "ubuntu24": "e2e-acmeu"}


@pytest.fixture(scope="module", params=list(DISTROS))
def issued(request):
    """(instance, status entry of its host, the first deploy) of a host deployed with the sandbox's default."""
    name = DISTROS[request.param]
    with booted(name, "--distro", request.param) as (up, hosts):
        assert up.returncode == 0, up.stdout + up.stderr
        yield name, hosts[0], pyinfra_deploy(instance=name, env=HTTPS_ON)


debian_only = pytest.mark.parametrize("issued", ["debian12"], indirect=True)


def context(info) -> ssl.SSLContext:
    """A client that trusts only the instance CA's current roots (as a browser trusts its store)."""
    return ssl.create_default_context(cafile=info["acme_roots"])


def served(info, name: str, alpn=("h2", "http/1.1")) -> tuple[dict, str, str]:
    """(certificate, its serial, the negotiated protocol) the host serves for `name`, verified."""
    ctx = context(info)
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection((info["address"], 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as conn:
            return conn.getpeercert(), conn.getpeercert()["serialNumber"], conn.selected_alpn_protocol()


def names_of(cert: dict) -> set[str]:
    return {value for kind, value in cert["subjectAltName"] if kind == "DNS"}


def revision(host) -> str:
    return host.check_output(f"curl -s http://127.0.0.1:8573{REVISION_PATH}")


def ran(result, name: str) -> bool:
    return any(op == f"{role.ROLE} | {name}" or op.startswith(f"{role.ROLE} | {name} (") for _, op in result.results.ran())


def test_first_deploy_gets_a_certificate_before_tls_goes_live(issued):
    _, info, first = issued
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    order = [op for _, op in first.results.ran()]
    steps = [role.CHALLENGE_TREE, role.ISSUE, role.INSTALL, role.TREE, role.CERT_CHECK]
    at = [next((i for i, op in enumerate(order) if op.startswith(f"{role.ROLE} | {step}")), None) for step in steps]
    assert None not in at and at == sorted(at), f"steps {steps} ran at {at} of {order}"
    for name in (info["acme_site"], info["acme_name"]):
        cert, _, protocol = served(info, name)  # raises unless the chain verifies for this name
        assert {info["acme_site"], info["acme_name"]} == names_of(cert)
        assert protocol == "h2"


def test_plain_http_redirects_everything_but_the_challenge(issued):
    _, info, _ = issued
    with socket.create_connection((info["address"], 80), timeout=10) as s:
        s.sendall(f"GET /api/stream HTTP/1.0\r\nHost: {info['acme_site']}\r\n\r\n".encode())
        head = s.makefile("rb").read(2048).decode(errors="replace")
    assert head.startswith("HTTP/1.1 301") and f"Location: https://{info['acme_site']}/api/stream" in head
    with socket.create_connection((info["address"], 80), timeout=10) as s:
        s.sendall(f"GET {ACME_CHALLENGE_PATH}no-such-token HTTP/1.0\r\nHost: {info['acme_site']}\r\n\r\n".encode())
        assert s.makefile("rb").read(2048).decode(errors="replace").startswith("HTTP/1.1 404")


def h2_streams(info, name: str, path: str, count: int, duration: float) -> dict[int, list[str]]:
    """`count` EventSource requests on ONE HTTP/2 connection (a page with `count` EventSources): the event ids
    each stream got within `duration`."""
    ctx = context(info)
    ctx.set_alpn_protocols(["h2"])
    events: dict[int, list[str]] = {}
    blocks: dict[int, _Blocks] = {}
    with ctx.wrap_socket(socket.create_connection((info["address"], 443), timeout=10), server_hostname=name) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for i in range(count):
            sid = 1 + 2 * i
            events[sid], blocks[sid] = [], _Blocks()
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", name), (":path", path),
                                    ("accept", "text/event-stream"), ("accept-encoding", "gzip, deflate, br")],
                              end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except (socket.timeout, ssl.SSLError):
                break
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    events[event.stream_id] += [b.event_id for b in blocks[event.stream_id].feed(event.data, 0)
                                                if b.is_event]
            sock.sendall(conn.data_to_send())
    return events


def test_more_than_six_streams_flow_on_one_http2_connection(issued):
    _, info, _ = issued
    events = h2_streams(info, info["acme_site"], "/api/stream", count=10, duration=4)
    starved = {sid: ids for sid, ids in events.items() if len(ids) < 2}
    assert not starved, f"streams with fewer than 2 events in 4 s on one HTTP/2 connection: {starved}"


def test_verify_passes_and_a_rerun_asks_the_ca_for_nothing(issued):
    name, _, _ = issued
    checked = ssedeploy("verify", "inventories/sandbox.py", instance=name, env=HTTPS_ON, check=False)
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert "test_every_name_gets_a_certificate_that_verifies_and_is_not_near_its_end" in checked.stdout
    again = pyinfra_deploy(instance=name, env=HTTPS_ON)
    assert again.returncode == 0 and again.results.ran(), again.stderr[-2000:]
    assert not again.results.changed(), again.results.changed()
    assert not ran(again, role.ISSUE)


@debian_only
def test_a_renewal_goes_live_through_the_validated_reload_while_100_clients_stream(issued, tmp_path):
    name, info, _ = issued
    host = host_of(info)
    _, before, _ = served(info, info["acme_site"])
    fleet = Fleet(info["address"], 443, "/api/stream", 100, stagger_s=0.01, tls=context(info),
                  server_name=info["acme_site"]).start()
    try:
        fleet.wait_streaming(60)
        since = fleet.mark()
        # certbot's own renewal, forced and without the random delay it adds when no one is at a terminal, with
        # the CA bundle its timer's service gets from ssedeploy's drop-in.
        renewed = host.run(f"sudo env REQUESTS_CA_BUNDLE={DIRECTORY_CA} certbot renew --force-renewal "
                           "--no-random-sleep-on-renew --cert-name sseapp")
        assert renewed.rc == 0, renewed.stdout + renewed.stderr
        assert "installed (was: " in renewed.stdout + renewed.stderr, "ssedeploy's hook did not run"
        wait_until(lambda: served(info, info["acme_site"])[1] != before, 30, "nginx serves the renewed certificate")
        until = fleet.mark()
        wait_until(lambda: all(c.events and c.events[-1][1] > until for c in fleet.clients), 30,
                   "every client has an event after the renewal")
    finally:
        clients = fleet.stop()
    assert not [c for c in clients if c.gave_up], [c.gave_up for c in clients if c.gave_up]
    holes = [id_holes(c, since) for c in clients]
    assert all(lost == 0 and repeated == 0 for lost, repeated in holes), holes
    bad = [(c.index, conn.status) for c in clients for conn in c.connections if conn.status not in (None, 200)]
    assert not bad, bad
    live = host.check_output(f"sudo readlink {acme_dir(parse({}))}/live")
    assert int(served(info, info["acme_site"])[1], 16) == int(live, 16) != int(before, 16)
    check = ssedeploy("verify", "inventories/sandbox.py", instance=name, env=HTTPS_ON, check=False)
    assert check.returncode == 0, check.stdout[-3000:]


@debian_only
def test_a_ca_that_cannot_be_reached_fails_the_run_clearly_and_the_site_serves_as_before(issued, tmp_path):
    name, info, _ = issued
    host = host_of(info)
    added = f"new.{name}.ssedeploy.test"
    names = {"site": {"server_names": [info["acme_site"], info["acme_name"], added]}}
    record = ca.load(name)
    rev, (_, serial, _) = revision(host), served(info, info["acme_site"])
    # A name that does not point at the host (no DNS record where the CA looks): refused, nothing changes.
    nowhere = f"nowhere.{name}.ssedeploy.test"
    refused = deploy_with({"site": {"server_names": [info["acme_site"], info["acme_name"], nowhere]}}, tmp_path,
                          instance=name, env=HTTPS_ON)
    assert refused.returncode != 0
    assert refused.results.failed_at(info["name"]).startswith(f"{role.ROLE} | {role.ISSUE} (names change:")
    assert f"Domain: {nowhere}" in refused.results.error(info["name"]), refused.results.error(info["name"])
    assert revision(host) == rev and served(info, info["acme_site"])[1] == serial
    ca.stop({"pebble": record["pebble"]})  # the CA goes away; its DNS stays
    wait_until(lambda: not ca.process_alive(record["pebble"]), 30, "pebble ended")
    fleet = Fleet(info["address"], 443, "/api/stream", 5, tls=context(info), server_name=info["acme_site"]).start()
    try:
        fleet.wait_streaming(60)
        failed = deploy_with(names, tmp_path, instance=name, env=HTTPS_ON)
    finally:
        clients = fleet.stop()
    assert failed.returncode != 0
    assert failed.results.failed_at(info["name"]).startswith(f"{role.ROLE} | {role.ISSUE} (names change:")
    error = failed.results.error(info["name"])
    assert f"ssedeploy: the ACME CA {info['acme_directory']} did not issue a certificate for" in error, error
    assert "Connection refused" in error, error
    assert revision(host) == rev and served(info, info["acme_site"])[1] == serial
    assert not [c for c in clients if c.gave_up] and all(id_holes(c) == (0, 0) for c in clients)
    # drift says what a deploy would ask for, and the certificate it has
    drift = ssedeploy("drift", str(write_inventory(names, tmp_path, name)), instance=name, env=HTTPS_ON, check=False)
    assert drift.returncode == 1 and "ACME: certificate" in drift.stdout, drift.stdout
    assert "ask the CA (names change" in drift.stdout and role.ISSUE in drift.stdout
    # The CA back (a new pebble: new roots, the saved account unknown to it), the name resolving: it converges.
    assert ssedeploy("sandbox", "up", "--name", name, check=False).returncode == 0
    ca.set_name(name, added, [info["address"]])
    info = {**info, "acme_roots": str(ca.roots_path(name))}
    done = deploy_with(names, tmp_path, instance=name, env=HTTPS_ON)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cert, _, _ = served(info, added)
    assert names_of(cert) == {info["acme_site"], info["acme_name"], added}
    again = deploy_with(names, tmp_path, instance=name, env=HTTPS_ON)
    assert again.returncode == 0 and not again.results.changed(), again.results.changed()
