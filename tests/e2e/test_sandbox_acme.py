"""The sandbox's local ACME CA (ssedeploy/sandbox/acme.py), end to end: certbot on a host gets a certificate for
the host's sandbox name from the instance's pebble, and it chains to the root pebble's management API serves;
a second `up` restarts a killed pebble and keeps what runs; `down` ends both servers by PID."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ssedeploy.inventory import ACME_CA_KEY, ACME_DIRECTORY_KEY, ACME_NAME_KEY, ACME_SITE_KEY, sandbox_host
from ssedeploy.sandbox import acme, instance

from .helpers import booted, host_of, ssedeploy
from .polling import wait_until

NAME = "e2e-ca"
VALIDITY = 86400  # seconds: not pebble's default, so the config is seen to reach it
REMOTE_CA = "/tmp/acme-listener-ca.pem"


@pytest.fixture(scope="module")
def ca():
    """(the host's `status --json` entry, testinfra host) of a one-host instance with certbot installed and the
    listener CA copied to the host."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot sandbox hosts and need root (run `make test` as root)")
    with booted(NAME, "--cert-validity", str(VALIDITY)) as (up, hosts):
        assert up.returncode == 0, up.stdout + up.stderr
        info = hosts[0]
        host = host_of(info)
        installed = host.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq certbot")
        assert installed.rc == 0, installed.stdout + installed.stderr
        client = instance.connect(info)
        try:
            client.open_sftp().put(info["acme_ca"], REMOTE_CA)
        finally:
            client.close()
        yield info, host


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def certbot(host, info: dict, *names: str) -> str:
    """certbot on the host against the instance's CA (trusting the listener CA alone); the live directory."""
    domains = " ".join(f"-d {n}" for n in names)
    result = host.run(f"REQUESTS_CA_BUNDLE={REMOTE_CA} certbot certonly --standalone --non-interactive --agree-tos "
                      f"-m t@example.org --server {info['acme_directory']} --cert-name {names[0]} {domains}")
    if result.rc != 0:
        log = host.run("tail -n 40 /var/log/letsencrypt/letsencrypt.log").stdout
        pytest.fail(f"certbot exited {result.rc}:\n{result.stdout}{result.stderr}\n{log}")
    return f"/etc/letsencrypt/live/{names[0]}"


def chains_to_the_cas_root(host, live: str, tmp_path: Path) -> Path:
    """Check with openssl on this machine that the host's certificate chains to pebble's current root."""
    record = acme.load(NAME)
    [root] = acme.roots(record["address"], record["ca"])
    for name, text in (("root.pem", root), ("cert.pem", host.check_output(f"cat {live}/cert.pem")),
                       ("chain.pem", host.check_output(f"cat {live}/chain.pem"))):
        (tmp_path / name).write_text(text + "\n")
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "root.pem", "-untrusted",
                             tmp_path / "chain.pem", tmp_path / "cert.pem"], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr
    return tmp_path / "cert.pem"


def x509(cert: Path, *what: str) -> str:
    return subprocess.run(["openssl", "x509", "-in", cert, "-noout", *what], capture_output=True, text=True,
                          check=True).stdout


def test_status_and_inventory_name_the_ca_and_it_resolves_the_instances_names(ca):
    info, _ = ca
    record = acme.load(NAME)
    gateway = record["address"]
    assert info["acme_directory"] == f"https://{gateway}:{acme.PORT}/dir"
    assert info["acme_ca"] == str(acme.listener_ca(NAME)) and Path(info["acme_ca"]).is_file()
    assert info["acme_name"] == f"{info['name']}.{NAME}.ssedeploy.test"
    assert info["acme_site"] == f"{NAME}.ssedeploy.test"
    data = sandbox_host(info)[1]
    assert [data[k] for k in (ACME_DIRECTORY_KEY, ACME_CA_KEY, ACME_NAME_KEY, ACME_SITE_KEY)] == \
        [info["acme_directory"], info["acme_ca"], info["acme_name"], info["acme_site"]]
    assert acme.names(NAME) == {info["acme_name"]: [info["address"]], info["acme_site"]: [info["address"]]}
    assert acme.alive(record) and record["validity"] == VALIDITY


def test_certbot_on_a_host_gets_a_certificate_that_chains_to_the_cas_root(ca, tmp_path):
    info, host = ca
    live = certbot(host, info, info["acme_name"], info["acme_site"])
    cert = chains_to_the_cas_root(host, live, tmp_path)
    san = x509(cert, "-ext", "subjectAltName")
    assert f"DNS:{info['acme_name']}" in san and f"DNS:{info['acme_site']}" in san
    dates = dict(line.split("=", 1) for line in x509(cert, "-startdate", "-enddate").splitlines())
    start, end = (datetime.datetime.strptime(" ".join(dates[k].split()), "%b %d %H:%M:%S %Y %Z")
                  for k in ("notBefore", "notAfter"))
    assert (end - start).total_seconds() in (VALIDITY - 1, VALIDITY), "pebble's notAfter is notBefore + period - 1 s"


def test_a_second_up_restarts_a_killed_pebble_and_keeps_what_runs(ca, tmp_path):
    info, host = ca
    before = acme.load(NAME)
    ssedeploy("sandbox", "up", "--name", NAME)
    assert acme.load(NAME)["pebble"] == before["pebble"], "the running pebble is kept"
    os.kill(before["pebble"]["pid"], signal.SIGKILL)
    wait_until(lambda: not running(before["pebble"]["pid"]), 10, "pebble killed")
    ssedeploy("sandbox", "up", "--name", NAME)
    after = acme.load(NAME)
    assert after["pebble"]["pid"] != before["pebble"]["pid"] and acme.alive(after)
    assert after["challtestsrv"] == before["challtestsrv"], "the running challtestsrv is kept"
    assert after["validity"] == VALIDITY, "an `up` without --cert-validity keeps the instance's"
    # The new pebble has a new root and no accounts: certbot's saved one is unknown to it (certbot 2.1 then
    # fails with "AttributeError: can't set attribute"), so it registers anew, and gets a certificate under
    # the new root for a name challtestsrv still resolves.
    host.run_expect([0], f"rm -r /etc/letsencrypt/accounts/{after['address']}:{acme.PORT}")
    chains_to_the_cas_root(host, certbot(host, info, info["acme_site"]), tmp_path)


def listening(address: str) -> str:
    ports = " or ".join(f"sport = :{p}" for p in (acme.PORT, acme.MANAGEMENT_PORT, acme.DNS_PORT,
                                                  acme.DNS_MANAGEMENT_PORT))
    return subprocess.run(["ss", "-Hltun", "src", address, f"( {ports} )"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_down_ends_pebble_and_challtestsrv(ca):
    record = acme.load(NAME)
    assert listening(record["address"])
    ssedeploy("sandbox", "down", "--name", NAME)
    for key in ("pebble", "challtestsrv"):
        assert not running(record[key]["pid"]), f"{key} outlived `down`"
    assert not listening(record["address"]), "the CA's ports are still taken"
    assert json.loads(ssedeploy("sandbox", "status", "--name", NAME, "--json").stdout) == []
