"""ACME certificates (site.tls.mode acme): what a client gets on the TLS port, checked from the controller like
a browser would (chain against site.tls.roots or the controller's trust store, every name), the days left,
and that nginx serves the certificate ssedeploy put live, which is certbot's current one."""

from __future__ import annotations

import socket
import ssl
import time
import warnings

import pytest

from ssedeploy import acme


def acme_target(target):
    target.needs_nginx()
    tls = target.settings.site.tls
    if not tls or tls.mode != "acme":
        pytest.skip(f"{target.name}: site.tls is not mode acme")
    return tls


def served(target, name: str, roots: str | None) -> dict:
    """The certificate the host serves for `name`, verified as a client verifies it (chain and name)."""
    context = ssl.create_default_context(cafile=roots)
    port = target.settings.site.tls.port
    try:
        with socket.create_connection((target.address, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as conn:
                return conn.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        pytest.fail(f"{target.name}: the certificate served for {name} on port {port} does not verify "
                    f"against {roots or 'the trust store'}: {exc.verify_message}")


def test_every_name_gets_a_certificate_that_verifies_and_is_not_near_its_end(target):
    tls = acme_target(target)
    for name in target.settings.site.server_names:
        cert = served(target, name, tls.roots)
        days = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
        verdict = acme.expiry(days)
        assert verdict != "fail", (f"{target.name}: the certificate for {name} ends in {days:.1f} days "
                                   f"(under {acme.FAIL_DAYS}): certbot's renewal is not working")
        if verdict == "warn":
            warnings.warn(f"{target.name}: the certificate for {name} ends in {days:.1f} days "
                          f"(under {acme.WARN_DAYS}): check certbot.timer")


def test_nginx_serves_the_certificate_ssedeploy_put_live_which_is_certbots(target):
    acme_target(target)
    s = target.settings
    certs = target.certs()
    assert certs.lineage, f"{target.name}: certbot holds no certificate named {acme.cert_name(s)}"
    assert acme.same_names(certs.lineage.names, s.site.server_names), \
        f"{target.name}: certbot's certificate is for {sorted(certs.lineage.names)}, not {sorted(s.site.server_names)}"
    assert certs.live == certs.lineage.serial, \
        f"{target.name}: live certificate {certs.live} is not certbot's current one {certs.lineage.serial}"
    assert certs.served == certs.live, f"{target.name}: nginx serves {certs.served}, the live one is {certs.live}"


def test_renewal_is_scheduled_and_goes_through_ssedeploy(target):
    acme_target(target)
    s = target.settings
    assert target.host.service("certbot.timer").is_enabled, f"{target.name}: certbot.timer is not enabled"
    hook = target.host.file(acme.hook_path(s))
    assert hook.exists and hook.mode & 0o111 and hook.content_string == acme.renew_hook(s), \
        f"{target.name}: {acme.hook_path(s)} is not ssedeploy's renewal hook"
