"""nginx from the distro's packages, with ssedeploy's config: SSE settings only in the SSE locations.

The config goes live only through `nginx_config` (staged, swapped, tested, restored
on failure). nginx is reloaded once per run and only when something changed, and the
run fails unless the new workers serve the new revision; it is restarted only when
its package or its systemd drop-in changed.
"""

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles import APT_LOCK_WAIT
from ssedeploy import nginx as conf
from ssedeploy.facts import NginxDefaultServers, NginxRevisions, revision_request
from ssedeploy.operations import host_limits, nginx_config

STATE_DIR = "/var/lib/ssedeploy/nginx"


def served_revision_check(settings) -> str:
    """Poll the loopback revision until nginx serves the one the swap recorded (reloads are asynchronous)."""
    return (
        f"want=$(cat {STATE_DIR}/revision); for i in $(seq 100); do "
        f'{revision_request(settings.site.revision_port)} | grep -qx "$want" && exit 0; sleep 0.1; done; '
        'echo "nginx does not serve config revision $want 10 s after the reload" >&2; exit 1'
    )


def tls(settings):
    """The certificate and key nginx serves: yours, or a self-signed pair made on the host once."""
    cert, key = conf.tls_paths(settings)
    tls = settings.site.tls
    files.directory(name="TLS directory", path=conf.TLS_DIR, user="root", group="root", mode="700")
    if tls.mode == "files":
        return [
            files.put(name="TLS certificate", src=tls.certificate, dest=cert, mode="644"),
            files.put(name="TLS key", src=tls.key, dest=key, mode="600"),
        ]
    apt.packages(name="Install openssl", packages=["openssl"], extra_install_args=APT_LOCK_WAIT)
    if host.get_fact(File, path=cert) and host.get_fact(File, path=key):
        return []
    names = [n for n in settings.site.server_names if n != "_"] or [host.name]
    san = ",".join(f"DNS:{n}" for n in names)
    return [server.shell(
        name="Self-signed TLS certificate",
        commands=[
            f"openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN={names[0]} "
            f"-addext subjectAltName={san} -keyout {key} -out {cert} 2>/dev/null && chmod 600 {key}"
        ],
    )]


def default_server(settings):
    """With server_name `_` the site must be nginx's default server: another site that claims it on the
    same port is named here and the host stops before the swap (nginx -t would refuse both)."""
    claims = conf.foreign_default_servers(host.get_fact(NginxDefaultServers), settings)
    if claims:
        message = (
            f"host {host.name}: another site is nginx's default server on a port of ssedeploy's site "
            f"(site.server_names has '_', so ssedeploy's site must be the default): {'; '.join(claims)}. "
            "Remove default_server from that listen line (or disable that site), or give "
            "site.server_names the real host names instead of '_'."
        )
        server.shell(name="No other site is nginx's default server", commands=[f"echo {shlex.quote(message)} >&2; exit 1"])


@deploy("nginx")
def nginx(settings):
    apt.update(name="apt lists are fresh", cache_time=3600)
    package = apt.packages(name="Install nginx", packages=["nginx"], extra_install_args=APT_LOCK_WAIT)
    drop_in = files.put(
        name=f"nginx.service drop-in {conf.DROP_IN}", src=StringIO(conf.drop_in(host_limits(settings))),
        dest=conf.DROP_IN, mode="644",
    )
    systemd.daemon_reload(name="systemd daemon-reload", _if=drop_in.did_change)
    certificate = tls(settings) if settings.site.tls else []
    default_server(settings)
    tree = nginx_config(name="nginx config (staged, tested, swapped)", settings=settings)
    systemd.service(name="nginx is running and enabled", service="nginx", running=True, enabled=True)

    # A run that died between putting a config live and reloading leaves nginx on the old one: the
    # next run reloads though no file changes, unconditionally so that `drift` reports it too.
    revisions = host.get_fact(NginxRevisions, port=settings.site.revision_port, state_dir=STATE_DIR)
    pending = revisions["live"] is not None and revisions["served"] != revisions["live"]
    restart = any_changed(package, drop_in)
    systemd.service(name="Restart nginx (package or drop-in changed)", service="nginx", restarted=True,
                    _if=restart)
    if pending and not (package.will_change or drop_in.will_change):
        reload_if, check_if = None, None
    else:
        reload_if = [any_changed(tree, *certificate), lambda: not restart()]
        check_if = any_changed(tree, package, drop_in, *certificate)
    systemd.service(name="Reload nginx gracefully", service="nginx", reloaded=True, _if=reload_if)
    server.shell(name="nginx serves the new config revision", commands=[served_revision_check(settings)],
                 _if=check_if)
