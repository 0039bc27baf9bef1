"""nginx from the distro's packages, with ssedeploy's site: SSE settings only in the SSE locations."""

import hashlib
from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from ssedeploy.render import render

SITE = "/etc/nginx/sites-available/ssedeploy.conf"
ENABLED = "/etc/nginx/sites-enabled/ssedeploy.conf"
# Real servers run unattended-upgrades right after first boot: wait for the dpkg lock.
APT_LOCK_WAIT = "-o DPkg::Lock::Timeout=300"


def upstream_name(settings) -> str:
    return f"{settings.app.name.replace('-', '_')}_upstream"


def site_conf(settings) -> tuple[str, str]:
    """The site and its revision; the site ends in a loopback server that answers with that revision."""
    body = render(
        "nginx/site.conf.j2", settings=settings, upstream=upstream_name(settings),
        read_timeout=settings.proxy_read_timeout,
    )
    rev = hashlib.sha256(body.encode()).hexdigest()[:16]
    return body + render("nginx/revision.conf.j2", revision=rev, port=settings.site.revision_port), rev


def served_revision_check(settings, rev: str) -> str:
    """Poll the loopback revision until the new workers serve `rev` (a reload is asynchronous)."""
    fetch = (
        f"exec 3<>/dev/tcp/127.0.0.1/{settings.site.revision_port}; "
        'printf "GET /ssedeploy/revision HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3'
    )
    return (
        f"bash -c 'for i in $(seq 100); do ({fetch}) 2>/dev/null | grep -qx {rev} && exit 0; sleep 0.1; done; "
        f'echo "nginx does not serve config revision {rev} 10 s after the reload" >&2; exit 1\''
    )


@deploy("nginx")
def nginx(settings):
    apt.packages(
        name="Install nginx", packages=["nginx"], update=True, cache_time=3600,
        extra_install_args=APT_LOCK_WAIT,
    )
    text, rev = site_conf(settings)
    site = files.put(name="Render the ssedeploy site", src=StringIO(text), dest=SITE, mode="644")
    enabled = files.link(name="Enable the ssedeploy site", path=ENABLED, target=SITE)
    default = files.link(name="Disable the distro's default site", path="/etc/nginx/sites-enabled/default",
                         present=False)
    changed = any_changed(site, enabled, default)
    server.shell(name="Check the whole nginx config (nginx -t)", commands=["nginx -t -q"], _if=changed)
    systemd.service(name="nginx is running and enabled", service="nginx", running=True, enabled=True)
    systemd.service(name="Reload nginx gracefully", service="nginx", reloaded=True, _if=changed)
    server.shell(name=f"nginx serves config revision {rev}", commands=[served_revision_check(settings, rev)],
                 _if=changed)
