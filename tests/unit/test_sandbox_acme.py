"""The sandbox's ACME CA (ssedeploy/sandbox/acme.py): config, names, the listener certificate, and the real pebble
and pebble-challtestsrv (machine packages, `make deps`) on loopback ports of their own."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ssedeploy.inventory import (ACME_CA_KEY, ACME_DIRECTORY_KEY, ACME_NAME_KEY, ACME_SITE_KEY, SANDBOX_EMAIL,
                                 sandbox_host)
from ssedeploy.settings import BASE_SITE_KEY
from ssedeploy.sandbox import acme, instance

from ..polling import wait_until

LOOPBACK = "127.0.0.1"


def test_pebble_config_puts_both_listeners_on_the_gateway_and_validates_on_the_hosts_ports(tmp_path):
    config = acme.pebble_config("198.18.9.1", tmp_path, 3600)["pebble"]
    assert config["listenAddress"] == "198.18.9.1:14000"
    assert config["managementListenAddress"] == "198.18.9.1:15000"
    assert (config["httpPort"], config["tlsPort"]) == (80, 443)
    assert config["certificate"] == str(tmp_path / "listener.pem")
    assert config["privateKey"] == str(tmp_path / "listener.key")
    assert config["certificateValidityPeriod"] == 3600
    assert config["externalAccountBindingRequired"] is False
    assert acme.pebble_config("198.18.9.1", tmp_path)["pebble"]["certificateValidityPeriod"] == 0  # pebble's default
    assert acme.directory_url("198.18.9.1") == "https://198.18.9.1:14000/dir"


def test_challtestsrv_serves_only_dns_and_its_management_api_and_resolves_nothing_unregistered():
    cmd = acme.challtestsrv_command("198.18.9.1")
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    assert flags == {"-dns01": "198.18.9.1:8053", "-management": "198.18.9.1:8055", "-http01": "", "-https01": "",
                     "-tlsalpn01": "", "-defaultIPv4": "", "-defaultIPv6": ""}
    pebble = acme.pebble_command("198.18.9.1", acme.acme_dir("x"))
    assert pebble[pebble.index("-dnsserver") + 1] == "198.18.9.1:8053"


def test_pebble_runs_deterministically_whatever_the_callers_environment():
    env = acme.pebble_env({"PATH": "/usr/bin", "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_WFE_NONCEREJECT": "90"})
    assert env == {"PATH": "/usr/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                   "PEBBLE_AUTHZREUSE": "0", "PEBBLE_ALTERNATE_ROOTS": "0", "PEBBLE_CHAIN_LENGTH": "1"}


def test_each_host_and_the_site_get_a_test_name():
    names = acme.default_names("ci-1", [("ci-1-1", "198.18.9.2"), ("ci-1-2", "198.18.9.3")])
    assert names == {"ci-1-1.ci-1.ssedeploy.test": ["198.18.9.2"], "ci-1-2.ci-1.ssedeploy.test": ["198.18.9.3"],
                     "ci-1.ssedeploy.test": ["198.18.9.2"]}
    assert acme.default_names("ci-1", []) == {}


def test_status_and_inventory_carry_the_ca_and_the_instance_record_keeps_its_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(instance.hosts, "HOSTS_DIR", tmp_path / "hosts")
    rec = instance.Record("new", "debian12", "198.18.5.0/24", str(tmp_path),
                          [instance.Host("new-1", "198.18.5.2", 1, None)])
    assert set(json.loads(rec.dump())) == {"instance", "distro", "subnet", "state_dir", "hosts"}
    assert not {k for k in instance.host_status(rec, rec.hosts[0]) if k.startswith("acme")}
    acme.save("new", {"address": "198.18.5.1", "ca": str(acme.listener_ca("new")), "names": {}})
    info = instance.host_status(rec, rec.hosts[0])
    data = sandbox_host(info)[1]
    assert data[ACME_DIRECTORY_KEY] == info["acme_directory"] == "https://198.18.5.1:14000/dir"
    assert data[ACME_CA_KEY] == str(tmp_path / "hosts/new/acme/listener-ca.pem")
    assert data[ACME_NAME_KEY] == "new-1.new.ssedeploy.test"
    assert data[ACME_SITE_KEY] == "new.ssedeploy.test"
    # The base site: HTTPS from this CA for the host's names (the instance's site name first on the first host)
    assert data[BASE_SITE_KEY] == {
        "server_names": ["new.ssedeploy.test", "new-1.new.ssedeploy.test"],
        "tls": {"mode": "acme", "email": SANDBOX_EMAIL, "directory": "https://198.18.5.1:14000/dir",
                "directory_ca": info["acme_ca"], "roots": str(tmp_path / "hosts/new/acme/roots.pem")}}
    assert BASE_SITE_KEY not in sandbox_host(info, https=False)[1]
    second = instance.host_status(rec, instance.Host("new-2", "198.18.5.3", 2, None))
    assert sandbox_host(second)[1][BASE_SITE_KEY]["server_names"] == ["new-2.new.ssedeploy.test"]


def test_pebble_and_challtestsrv_are_machine_packages():
    assert instance.MACHINE_TOOLS["pebble"] == instance.MACHINE_TOOLS["pebble-challtestsrv"] == "pebble"


def openssl(*args, check=True):
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=check)


def test_listener_certificate_covers_the_gateway_address_and_is_made_once(tmp_path, monkeypatch):
    monkeypatch.setattr(acme.hosts, "HOSTS_DIR", tmp_path)
    directory = acme.ensure("x", "198.18.9.1")
    ca, leaf = directory / "listener-ca.pem", directory / "listener.pem"
    assert openssl("verify", "-CAfile", ca, leaf).stdout.strip().endswith("OK")
    assert "IP Address:198.18.9.1" in openssl("x509", "-in", leaf, "-noout", "-ext", "subjectAltName").stdout
    assert "CA:TRUE" in openssl("x509", "-in", ca, "-noout", "-ext", "basicConstraints").stdout
    for key in ("listener.key", "listener-ca.key"):
        assert (directory / key).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["listener-ca.key", "listener-ca.pem", "listener.key",
                                                          "listener.pem"]
    made = leaf.read_bytes()
    acme.ensure("x", "198.18.9.1")
    assert leaf.read_bytes() == made, "a good certificate is kept"
    acme.ensure("x", "198.18.9.7")
    assert "IP Address:198.18.9.7" in openssl("x509", "-in", leaf, "-noout", "-ext", "subjectAltName").stdout


class FakeChalltestsrv(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        self.send_response(200 if self.path in ("/add-a", "/clear-a") else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_name_is_set_by_clearing_then_adding_its_addresses(tmp_path, monkeypatch):
    server = ThreadingHTTPServer((LOOPBACK, 0), FakeChalltestsrv)
    monkeypatch.setattr(acme, "DNS_MANAGEMENT_PORT", server.server_address[1])
    monkeypatch.setattr(acme.hosts, "HOSTS_DIR", tmp_path)
    FakeChalltestsrv.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        acme.save("x", {"address": LOOPBACK, "names": {"x.ssedeploy.test": ["198.18.9.2"]}})
        acme.set_name("x", "x.ssedeploy.test", ["198.18.9.3"])
        acme.set_name("x", "extra.x.ssedeploy.test", ["198.18.9.4", "198.18.9.5"])
        acme.set_name("x", "extra.x.ssedeploy.test", [])
    finally:
        server.shutdown()
        server.server_close()
    assert FakeChalltestsrv.requests == [
        ("/clear-a", {"host": "x.ssedeploy.test"}),
        ("/add-a", {"host": "x.ssedeploy.test", "addresses": ["198.18.9.3"]}),
        ("/clear-a", {"host": "extra.x.ssedeploy.test"}),
        ("/add-a", {"host": "extra.x.ssedeploy.test", "addresses": ["198.18.9.4", "198.18.9.5"]}),
        ("/clear-a", {"host": "extra.x.ssedeploy.test"}),
    ]
    assert acme.names("x") == {"x.ssedeploy.test": ["198.18.9.3"]}


def test_a_name_of_an_instance_without_a_ca_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(acme.hosts, "HOSTS_DIR", tmp_path)
    with pytest.raises(acme.AcmeError, match="runs no ACME CA"):
        acme.set_name("x", "x.ssedeploy.test", ["198.18.9.3"])


def free_port() -> int:
    """A port free for TCP and UDP on loopback, so parallel runs of these tests do not collide."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            return port


def query_a(port: int, name: str) -> list[str]:
    """The addresses of an A query to the DNS server at loopback:port."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", 0x5eed, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(packet, (LOOPBACK, port))
        reply = s.recv(4096)
    count = struct.unpack(">H", reply[6:8])[0]
    offset, found = 12 + len(question) + 4, []
    for _ in range(count):
        offset += 2 if reply[offset] & 0xC0 == 0xC0 else len(question)  # the name: a pointer, or written out
        rtype, _, _, length = struct.unpack(">HHIH", reply[offset:offset + 10])
        if rtype == 1:
            found.append(socket.inet_ntoa(reply[offset + 10:offset + 10 + length]))
        offset += 10 + length
    return found


@pytest.fixture
def loopback_ca(tmp_path, monkeypatch):
    """The real servers' ports moved to free loopback ones; yields (acme dir, log dir); ends what a test left."""
    monkeypatch.setattr(acme.hosts, "HOSTS_DIR", tmp_path / "hosts")
    for name in ("PORT", "MANAGEMENT_PORT", "DNS_PORT", "DNS_MANAGEMENT_PORT"):
        monkeypatch.setattr(acme, name, free_port())
    started = []
    real_spawn = acme.hosts.spawn
    monkeypatch.setattr(acme.hosts, "spawn", lambda *a, **kw: started.append(real_spawn(*a, **kw)) or started[-1])
    yield acme.ensure("x", LOOPBACK), tmp_path / "logs"
    for proc in started:
        acme.stop_process(proc)


def listening(port: int) -> bool:
    return bool(subprocess.run(["ss", "-Hltun", "src", LOOPBACK, "sport", "=", f":{port}"],
                               capture_output=True, text=True, check=True).stdout.strip())


def test_the_ca_answers_issues_under_its_root_resolves_registered_names_and_stops_by_pid(loopback_ca):
    directory, logs = loopback_ca
    record = acme.start(LOOPBACK, directory, logs, validity=3600)
    acme.wait_answering(record)
    assert acme.alive(record)
    assert not acme.process_alive({**record["pebble"], "start_time": record["pebble"]["start_time"] + 1}), \
        "a reused PID is not ours"
    assert json.loads((directory / "pebble.json").read_text())["pebble"]["certificateValidityPeriod"] == 3600

    [root] = acme.roots(LOOPBACK, directory / "listener-ca.pem")
    [intermediate] = acme.intermediates(LOOPBACK, directory / "listener-ca.pem")
    (directory / "root.pem").write_text(root)
    (directory / "intermediate.pem").write_text(intermediate)
    assert "Pebble Root CA" in openssl("x509", "-in", directory / "root.pem", "-noout", "-subject").stdout
    assert openssl("verify", "-CAfile", directory / "root.pem", directory / "intermediate.pem").returncode == 0

    assert query_a(acme.DNS_PORT, "a.x.ssedeploy.test") == [], "no default answer"
    acme.register(LOOPBACK, {"a.x.ssedeploy.test": ["198.18.9.2"]})
    assert query_a(acme.DNS_PORT, "a.x.ssedeploy.test") == ["198.18.9.2"]
    acme.set_a(LOOPBACK, "a.x.ssedeploy.test", ["198.18.9.3"])
    assert query_a(acme.DNS_PORT, "a.x.ssedeploy.test") == ["198.18.9.3"], "a moved name answers with its new address"

    acme.stop(record)
    assert not acme.process_alive(record["pebble"]) and not acme.process_alive(record["challtestsrv"])
    wait_until(lambda: not any(map(listening, (acme.PORT, acme.MANAGEMENT_PORT, acme.DNS_PORT,
                                               acme.DNS_MANAGEMENT_PORT))), 10, "the CA's ports free")
    with pytest.raises(acme.AcmeError, match="does not answer"):
        acme.wait_answering(record, timeout=0.5)


def test_running_servers_are_kept_a_dead_one_restarted_and_unrecorded_ones_ended(loopback_ca):
    directory, logs = loopback_ca
    first = acme.start(LOOPBACK, directory, logs)
    acme.wait_answering(first)
    again = acme.start(LOOPBACK, directory, logs, running=first)
    assert again["pebble"] == first["pebble"] and again["challtestsrv"] == first["challtestsrv"], "both kept"

    os.kill(first["pebble"]["pid"], 9)
    wait_until(lambda: not acme.process_alive(first["pebble"]), 10, "pebble gone")
    restarted = acme.start(LOOPBACK, directory, logs, running=first)
    acme.wait_answering(restarted)
    assert restarted["pebble"]["pid"] != first["pebble"]["pid"]
    assert restarted["challtestsrv"] == first["challtestsrv"], "the running challtestsrv is kept"

    longer = acme.start(LOOPBACK, directory, logs, validity=7200, running=restarted)
    acme.wait_answering(longer)
    assert longer["pebble"]["pid"] != restarted["pebble"]["pid"], "another validity needs another pebble"
    assert not acme.process_alive(restarted["pebble"])

    fresh = acme.start(LOOPBACK, directory, logs)  # a record lost: what runs on the address is ended first
    assert not acme.process_alive(longer["pebble"]) and not acme.process_alive(longer["challtestsrv"])
    acme.wait_answering(fresh)
    assert acme.alive(fresh)


def test_a_server_that_cannot_bind_is_reported_with_its_log(loopback_ca):
    directory, logs = loopback_ca
    with socket.socket() as taken:
        taken.bind((LOOPBACK, acme.PORT))  # bound, not listening: a connection to it is refused at once
        record = acme.start(LOOPBACK, directory, logs)
        with pytest.raises(acme.AcmeError, match=r"(?s)pebble: exited with status 1.*pebble\.log"):
            acme.wait_answering(record, timeout=30)
    acme.stop(record)
