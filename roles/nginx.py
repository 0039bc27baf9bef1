"""nginx from the distro's packages, with ssedeploy's site: SSE settings only in the SSE locations."""

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


def site_conf(settings) -> str:
    return render(
        "nginx/site.conf.j2", settings=settings, upstream=upstream_name(settings),
        read_timeout=settings.proxy_read_timeout,
    )


@deploy("nginx")
def nginx(settings):
    apt.packages(
        name="Install nginx", packages=["nginx"], update=True, cache_time=3600,
        extra_install_args=APT_LOCK_WAIT,
    )
    site = files.put(name="Render the ssedeploy site", src=StringIO(site_conf(settings)), dest=SITE, mode="644")
    enabled = files.link(name="Enable the ssedeploy site", path=ENABLED, target=SITE)
    default = files.link(name="Disable the distro's default site", path="/etc/nginx/sites-enabled/default",
                         present=False)
    changed = any_changed(site, enabled, default)
    server.shell(name="Check the whole nginx config (nginx -t)", commands=["nginx -t -q"], _if=changed)
    systemd.service(name="nginx is running and enabled", service="nginx", running=True, enabled=True)
    systemd.service(name="Reload nginx gracefully", service="nginx", reloaded=True, _if=changed)
