"""ACME certificates (site.tls.mode "acme"): what a run asks certbot for and what it puts live, decided from
what is on the host. Pure functions; roles/nginx.py runs them and scripts/acme-cert.sh does the host's part.

Choices where the issue is silent:
- certbot's lineage is named after the app (`--cert-name APP`) and holds exactly site.server_names; a run
  asks the CA only when there is no lineage, its names or its CA differ, or it is inside certbot's own
  renewal window (30 days), so a re-run requests nothing and the CA's rate limits are never spent.
- nginx never reads certbot's files: the certificate is copied into /etc/ssl/ssedeploy/APP-acme/SERIAL/
  and a `live` link is switched after `nginx -t` (acme-cert.sh), so a renewal goes live only through
  ssedeploy's validated reload, proven by the serial nginx then serves.
- Names added later are validated through the site's plain-HTTP server, which nginx uses for names no
  server lists as long as no other site on the host claims `default_server` on port 80.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from . import nginx
from .paths import STATE
from .settings import Settings

LETSENCRYPT = "/etc/letsencrypt"
SCRIPT = f"{STATE}/acme-cert.sh"  # scripts/acme-cert.sh on the host: the deploy and the renewal hook run it
DIRECTORY_CA = "/etc/ssedeploy/acme-directory-ca.pem"  # site.tls.directory_ca on the host
# certbot's own timer runs certbot.service: a drop-in gives it the private CA's bundle (REQUESTS_CA_BUNDLE).
CERTBOT_DROP_IN = "/etc/systemd/system/certbot.service.d/ssedeploy.conf"
RENEW_DAYS = 30  # certbot's default renew_before_expiry
SERVED_TIMEOUT = 30  # seconds for nginx's new workers to serve a new certificate after a reload
# verify: days left on the served certificate
WARN_DAYS = 14
FAIL_DAYS = 3


def cert_name(settings: Settings) -> str:
    return settings.app.name


def lineage_dir(settings: Settings) -> str:
    return f"{LETSENCRYPT}/live/{cert_name(settings)}"


def hook_path(settings: Settings) -> str:
    """certbot runs every file here after a renewal; ours acts on its own lineage only."""
    return f"{LETSENCRYPT}/renewal-hooks/deploy/ssedeploy-{cert_name(settings)}"


def first_name(settings: Settings) -> str:
    """The name nginx is asked for (SNI) when the served certificate is checked."""
    return settings.site.server_names[0]


def fact_args(settings: Settings) -> dict:
    """The AcmeCerts fact's arguments for this site (the deploy and verify read the same state)."""
    return {"lineage": lineage_dir(settings), "renewal": f"{LETSENCRYPT}/renewal/{cert_name(settings)}.conf",
            "live_dir": nginx.acme_dir(settings), "port": settings.site.tls.port, "server_name": first_name(settings)}


@dataclass(frozen=True)
class Lineage:
    """What certbot holds for the app: the certificate's names, expiry (Unix time), serial, and its CA."""

    names: tuple[str, ...]
    not_after: int
    serial: str
    server: str | None


@dataclass(frozen=True)
class Certs:
    """The ACME certificate state of a host, as facts read it."""

    lineage: Lineage | None = None
    live: str | None = None        # the serial /etc/ssl/ssedeploy/APP-acme/live names
    served: str | None = None      # the serial nginx serves on the TLS port (None: nothing or unknown)
    challenge_live: bool = False   # the live site file already serves the HTTP-01 challenge location


@dataclass(frozen=True)
class Plan:
    request: str | None   # why certbot must ask the CA (None: it must not)
    install: bool         # put the lineage's certificate live (acme-cert.sh install)
    challenge_first: bool  # swap a tree that serves the challenge (and reload) before certbot runs
    tls_now: bool         # a certificate is live already, so the TLS server can be in the tree before issuance
    stale: bool           # nginx serves another serial than the live one: a reload must converge it


def same_names(a, b) -> bool:
    """DNS names compare without case or a final dot (the CA issues them lower-case)."""
    return {n.lower().rstrip(".") for n in a} == {n.lower().rstrip(".") for n in b}


def plan(names: list[str], directory: str, certs: Certs, now: int) -> Plan:
    lineage = certs.lineage
    if lineage is None:
        request = "no certificate yet"
    elif not same_names(lineage.names, names):
        request = f"names change: {' '.join(sorted(lineage.names))} -> {' '.join(sorted(names))}"
    elif lineage.server != directory:
        request = f"CA changes: {lineage.server} -> {directory}"
    elif lineage.not_after - now < RENEW_DAYS * 86400:
        request = f"{max(0, (lineage.not_after - now) // 86400)} days left"
    else:
        request = None
    install = request is not None or certs.live != lineage.serial
    stale = certs.live is not None and certs.served != certs.live and not install
    return Plan(request=request, install=install, challenge_first=request is not None and not certs.challenge_live,
                tls_now=certs.live is not None, stale=stale)


def describe(certs: Certs, decided: Plan, now: int) -> str:
    """The certificate state a run (and drift) reports for a host."""
    lineage = certs.lineage
    have = (f"certificate {lineage.serial} for {' '.join(lineage.names)}, "
            f"{days_left(lineage.not_after, now):.0f} days left, from {lineage.server}" if lineage else "no certificate")
    todo = [f"ask the CA ({decided.request})"] if decided.request else []
    todo += ["put it live"] if decided.install and not decided.request else []
    todo += ["reload nginx (it serves another serial)"] if decided.stale else []
    return f"ACME: {have}" + (f"; to do: {', '.join(todo)}" if todo else "")


def expiry(days: float) -> str:
    """verify's verdict on the served certificate's days left: ok, warn (under WARN_DAYS), fail (under FAIL_DAYS)."""
    return "fail" if days < FAIL_DAYS else "warn" if days < WARN_DAYS else "ok"


def issue_command(settings: Settings) -> list[str]:
    """acme-cert.sh's `issue` arguments for this site."""
    tls = settings.site.tls
    return [SCRIPT, "issue", nginx.ACME_WEBROOT, tls.directory, tls.email,
            DIRECTORY_CA if tls.directory_ca else "-", cert_name(settings), *settings.site.server_names]


def install_command(settings: Settings) -> list[str]:
    return [SCRIPT, "install", lineage_dir(settings), nginx.acme_dir(settings)]


def wait_command(settings: Settings) -> list[str]:
    return [SCRIPT, "wait", nginx.acme_dir(settings), str(settings.site.tls.port), first_name(settings),
            str(SERVED_TIMEOUT)]


def renew_hook(settings: Settings) -> str:
    """certbot's deploy hook: a renewed certificate of this lineage goes live through acme-cert.sh renew."""
    renew = [SCRIPT, "renew", lineage_dir(settings), nginx.acme_dir(settings), str(settings.site.tls.port),
             first_name(settings), str(SERVED_TIMEOUT)]
    return (
        "#!/bin/sh\n"
        "# Managed by ssedeploy: a renewed certificate goes live through nginx -t, a graceful reload and the\n"
        "# serial nginx then serves (never by certbot reloading nginx itself).\n"
        "set -eu\n"
        f'[ "${{RENEWED_LINEAGE:-}}" = {shlex.quote(lineage_dir(settings))} ] || exit 0\n'
        f"exec {shlex.join(renew)}\n"
    )


def certbot_drop_in() -> str:
    return ("# Managed by ssedeploy: certbot's renewal trusts the private ACME CA's directory certificate.\n"
            f"[Service]\nEnvironment=REQUESTS_CA_BUNDLE={DIRECTORY_CA}\n")


def days_left(not_after: int, now: int) -> float:
    return (not_after - now) / 86400


def read_state(lines: list[str]) -> Certs:
    """Certs from the AcmeCerts fact's output (`key value` lines; openssl's own formats)."""
    import datetime

    fields: dict[str, str] = {}
    names: list[str] = []
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "san":
            names += [n.strip()[4:] for n in value.split(",") if n.strip().startswith("DNS:")]
        elif value.strip():
            fields[key] = value.strip()
    lineage = None
    if "serial" in fields and "enddate" in fields:
        end = datetime.datetime.strptime(fields["enddate"].replace("  ", " "), "%b %d %H:%M:%S %Y %Z")
        lineage = Lineage(names=tuple(names), serial=fields["serial"], server=fields.get("server"),
                          not_after=int(end.replace(tzinfo=datetime.timezone.utc).timestamp()))
    return Certs(lineage=lineage, live=fields.get("live"), served=fields.get("served"),
                 challenge_live=fields.get("challenge") == "yes")
