"""ssedeploy/acme.py: what a run asks the CA for and puts live, from the host's certificate state; settings."""

from __future__ import annotations

import pytest

from roles.nginx import Action, plan as nginx_plan
from ssedeploy import acme
from ssedeploy.settings import parse

NOW = 1_800_000_000
DAY = 86400
CA = "https://ca.test/dir"
NAMES = ["a.example.org", "b.example.org"]


def lineage(names=NAMES, days=60, serial="AA", server=CA):
    return acme.Lineage(names=tuple(names), not_after=NOW + days * DAY, serial=serial, server=server)


@pytest.mark.parametrize("certs, request_, install, challenge_first, tls_now, stale", [
    # a fresh host: plain HTTP with the challenge first, then issue, then install
    (acme.Certs(), "no certificate yet", True, True, False, False),
    # the same names, far from expiry, live and served: nothing at all (no request: the CA's rate limits)
    (acme.Certs(lineage(), live="AA", served="AA", challenge_live=True), None, False, False, True, False),
    # the order of names, their case and a final dot do not matter (the CA issues lower-case names)
    (acme.Certs(lineage(NAMES[::-1]), live="AA", served="AA", challenge_live=True), None, False, False, True, False),
    (acme.Certs(lineage(["A.example.org.", "b.EXAMPLE.org"]), live="AA", served="AA", challenge_live=True), None,
     False, False, True, False),
    # a name added: request (the live tree answers the challenge already: no tree change before certbot)
    (acme.Certs(lineage(NAMES[:1]), live="AA", served="AA", challenge_live=True),
     "names change: a.example.org -> a.example.org b.example.org", True, False, True, False),
    # another CA (staging -> production)
    (acme.Certs(lineage(server="https://staging.test/dir"), live="AA", served="AA", challenge_live=True),
     f"CA changes: https://staging.test/dir -> {CA}", True, False, True, False),
    # inside certbot's renewal window
    (acme.Certs(lineage(days=29), live="AA", served="AA", challenge_live=True), "29 days left", True, False, True,
     False),
    (acme.Certs(lineage(days=-3), live="AA", served="AA", challenge_live=True), "0 days left", True, False, True,
     False),
    # certbot's timer renewed but its hook did not put it live: install, no request
    (acme.Certs(lineage(serial="BB"), live="AA", served="AA", challenge_live=True), None, True, False, True, False),
    # a cut between the link switch and the reload: nginx serves the old serial: converge by a reload
    (acme.Certs(lineage(), live="AA", served="99", challenge_live=True), None, False, False, True, True),
    # a host whose site was self-signed before: the certificate is issued before TLS moves to it
    (acme.Certs(challenge_live=False, served="5E1F"), "no certificate yet", True, True, False, False),
])
def test_plan(certs, request_, install, challenge_first, tls_now, stale):
    assert acme.plan(NAMES, CA, certs, NOW) == acme.Plan(
        request=request_, install=install, challenge_first=challenge_first, tls_now=tls_now, stale=stale)


def test_a_stale_certificate_is_a_convergence_reload_that_a_dry_run_lists():
    decided = nginx_plan(package=False, drop_in=False, tree=False, certificate=False, live="r1", served="r1",
                         certificate_stale=True)
    assert decided.action is Action.CONVERGE and decided.check_revision


def test_read_state_parses_openssl_and_certbot_formats():
    certs = acme.read_state([
        "serial 04A1B2", "enddate Mar  1 12:00:00 2027 GMT",
        "san     DNS:a.example.org, DNS:b.example.org, IP Address:198.18.0.2",
        f"server {CA}", "live 04A1B2", "served 04A1B2", "challenge yes"])
    assert certs == acme.Certs(lineage=acme.Lineage(("a.example.org", "b.example.org"), 1803902400, "04A1B2", CA),
                               live="04A1B2", served="04A1B2", challenge_live=True)
    assert acme.read_state(["live ", "served "]) == acme.Certs()


def test_commands_name_the_lineage_the_directory_and_the_trust():
    s = parse({"site": {"server_names": NAMES, "tls": {"mode": "acme", "email": "ops@example.org"}},
               "app": {"name": "shop"}})
    assert acme.issue_command(s) == [acme.SCRIPT, "issue", "/var/lib/ssedeploy/acme-challenge",
                                     "https://acme-v02.api.letsencrypt.org/directory", "ops@example.org", "-",
                                     "shop", *NAMES]
    assert acme.install_command(s) == [acme.SCRIPT, "install", "/etc/letsencrypt/live/shop",
                                       "/etc/ssl/ssedeploy/shop-acme"]
    assert acme.wait_command(s)[2:5] == ["/etc/ssl/ssedeploy/shop-acme", "443", "a.example.org"]


@pytest.mark.parametrize("site, field, value, says", [
    ({"server_names": ["_"]}, "site.server_names.0", "'_'", "HTTP-01 validates public DNS names only"),
    ({"server_names": ["a.example.org", "*.example.org"]}, "site.server_names.1", "'*.example.org'", "wildcard"),
    ({"server_names": ["198.18.0.2"]}, "site.server_names.0", "'198.18.0.2'", "IP address"),
    ({"server_names": ["localhost"]}, "site.server_names.0", "'localhost'", "localhost"),
    ({"server_names": ["a.example.org"], "listen_port": 8080}, "site.listen_port", "8080", "port 80 only"),
])
def test_what_http_01_cannot_validate_is_refused_naming_host_field_and_value(site, field, value, says):
    with pytest.raises(ValueError) as err:
        parse({"site": {**site, "tls": {"mode": "acme", "email": "ops@example.org"}}}, "web-1")
    assert f"host web-1: {field} = {value}: " in str(err.value) and says in str(err.value)


@pytest.mark.parametrize("tls, says", [
    ({"mode": "acme"}, "needs email"),
    ({"mode": "acme", "email": "not-an-address"}, "must be an email address"),
    ({"mode": "acme", "email": "o@example.org", "directory": "http://ca.test/dir"}, "must be an https:// URL"),
    ({"mode": "self-signed", "email": "o@example.org"}, "email: only for mode 'acme'"),
    ({"mode": "acme", "email": "o@example.org", "directory_ca": "/nonexistent.pem"}, "readable file"),
])
def test_bad_acme_settings_are_refused(tls, says):
    with pytest.raises(ValueError, match="host web-1: site.tls") as err:
        parse({"site": {"server_names": ["a.example.org"], "tls": tls}}, "web-1")
    assert says in str(err.value)
