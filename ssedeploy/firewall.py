"""ssedeploy's host firewall: one nftables table of its own, rendered here (pure), put live by
scripts/firewall-apply.sh, which undoes it unless the controller reaches the host again over a new SSH
connection in time (the way iptables-apply works).

It admits SSH (the inventory's port), the site's ports, loopback, replies to what the host opened, the ICMP
that path MTU discovery and IPv6 need, and what `firewall.allow` adds; everything else coming in is dropped.
Long-lived streams and connection tracking: the client side of every stream is a tracked connection, so
nf_conntrack_max is raised to `conntrack_max` where the host lets a deploy set it (not inside a container's
network namespace); the nginx-to-app side on loopback is not tracked at all (`notrack`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .render import render
from .settings import Settings

TABLE = "ssedeploy"
LIVE_FILE = "/etc/ssedeploy/firewall.nft"  # what ssedeploy-firewall.service loads at boot
UNIT = "ssedeploy-firewall.service"
# Tracked connections per expected stream: the client's, plus headroom for reconnects in TIME_WAIT and
# everything else the host talks to.
CONNTRACK_PER_STREAM = 4


def ports(settings: Settings, ssh_port: int, public: bool = True) -> list[int]:
    """The TCP ports everyone may reach: SSH and the site's public ports (never the revision port); SSH only
    where nginx does not run (`public` False: a cluster's app host)."""
    site = settings.site
    return sorted({ssh_port, *([site.listen_port, *([site.tls.port] if site.tls else [])] if public else [])})


def allow_rule(port: int, proto: str, source: str | None) -> str:
    """One `firewall.allow` entry as an nftables rule (without its verdict)."""
    if source is None:
        return f"{proto} dport {port}"
    family = "ip6" if ipaddress.ip_network(source).version == 6 else "ip"
    return f"{family} saddr {source} {proto} dport {port}"


def ruleset(settings: Settings, ssh_port: int, public: bool = True,
            peers: Sequence[tuple[int, str]] = ()) -> str:
    """The table, as the file `nft -f` loads. `public`: nginx runs here (see ports); `peers`: (port, source) a
    cluster's app host admits its proxies by (ssedeploy/cluster.py)."""
    allow = [allow_rule(port, "tcp", source) for port, source in peers]
    allow += [allow_rule(a.port, a.proto, a.source) for a in settings.firewall.allow]
    return render("nftables/ssedeploy.nft.j2", table=TABLE, ports=ports(settings, ssh_port, public), allow=allow)


def conntrack_max(settings: Settings, current: int | None) -> int | None:
    """The nf_conntrack_max a deploy sets: enough for the expected streams, never lower than the host's."""
    want = CONNTRACK_PER_STREAM * settings.nginx.expected_streams
    if current is None or current >= want:
        return None
    return want


STATE = "/var/lib/ssedeploy/firewall"  # firewall-apply.sh's previous rules, applied listing and result


def changed_rules(applied: str | None, kernel: str | None) -> list[str]:
    """The rules the kernel's table has (+) or lacks (-) against the one ssedeploy applied: what drift names."""
    if applied is None:
        return []
    if kernel is None:
        return [f"- table inet {TABLE} (gone)"]
    want = [line.strip() for line in applied.splitlines() if line.strip()]
    have = [line.strip() for line in kernel.splitlines() if line.strip()]
    return [f"- {r}" for r in want if r not in have] + [f"+ {r}" for r in have if r not in want]


def needs_apply(rendered_sha: str, live_sha: str | None, applied: str | None, kernel: str | None) -> str | None:
    """Why the ruleset must be applied (None: it is live as declared and nothing changed it)."""
    if live_sha != rendered_sha:
        return "new rules" if live_sha else "no firewall yet"
    if kernel is None:
        return f"table inet {TABLE} is not loaded"
    changed = changed_rules(applied, kernel)
    if changed:
        return f"rules changed on the host: {'; '.join(changed)}"
    return None
