"""The nginx tree: ssedeploy's files go live in /etc/nginx only if the whole tree passes ``nginx -t``,
and /etc/nginx is restored as it was if not. The host-side step is scripts/nginx-swap.sh."""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from .. import cluster, nginx
from ..facts import AppInstances, NginxVersion, PathStates
from ..instances import live_port
from ..paths import NGINX_STATE, app_dir
from ..settings import Settings
from .util import SCRIPTS, detached, host_limits, report_differences


def served_app_port(settings: Settings) -> int:
    """The app instance nginx sends to now (read from the host), or the first one before there is any."""
    app = settings.app
    found = host.get_fact(AppInstances, app=app.name, app_dir=app_dir(settings), ports=app.instance_ports,
                          revision_port=settings.site.revision_port)
    return live_port(found, app.instance_ports) or app.instance_ports[0]


def staged(settings: Settings, app_port: int | None, state_dir: str = NGINX_STATE, tls_live: bool = True,
           tls_files: tuple[str, str] | None = None, servers: list[str] | None = None):
    """The tree rendered for this host with its upstream at `app_port` (a cluster's proxy: at `servers`, every
    app host): (want, commands that stage it and upload nginx-swap.sh, the stage's path, revision). `want`
    maps each path the tree owns to its state."""
    version = host.get_fact(NginxVersion) or settings.nginx.version
    files, revision = nginx.render_tree(settings, version, host_limits(settings), app_port, tls_live, tls_files,
                                        servers, cluster.acme_peers(host.name))
    want = {f"{nginx.LIVE}/{rel}": ("F", hashlib.sha256(text.encode()).hexdigest()) for rel, text in files.items()}
    want |= {f"{nginx.LIVE}/{rel}": ("L", target) for rel, target in nginx.LINKS.items()}
    want |= {f"{nginx.LIVE}/{rel}": None for rel in nginx.REMOVED}
    stage = f"{state_dir}/stage-{revision}"
    dirs = sorted({str(Path(f"{stage}/files/{rel}").parent) for rel in files})
    commands = [f"rm -rf {stage} && mkdir -p -m 0700 {stage} && mkdir -p {' '.join(dirs)}"]
    for rel, text in files.items():
        commands.append(FileUploadCommand(StringIO(text), f"{stage}/files/{rel}"))
    links = "".join(f"{rel} {target}\n" for rel, target in nginx.LINKS.items())
    commands += [
        FileUploadCommand(StringIO(links), f"{stage}/links"),
        FileUploadCommand(StringIO("".join(f"{rel}\n" for rel in nginx.REMOVED)), f"{stage}/remove"),
        FileUploadCommand(StringIO(revision + "\n"), f"{stage}/revision"),
        FileUploadCommand(str(SCRIPTS / "nginx-swap.sh"), f"{state_dir}/nginx-swap.sh"),
    ]
    return want, commands, stage, revision


@operation()
def nginx_config(settings: Settings, state_dir: str = NGINX_STATE, tls_live: bool = True,
                 tls_files: tuple[str, str] | None = None):
    """
    Put ssedeploy's nginx files live only if the whole tree passes ``nginx -t``.

    + settings: the host's ssedeploy settings
    + state_dir: where staging, backups and the live revision are kept (outside /etc/nginx)
    + tls_live: False renders the site without its TLS server (an ACME certificate not issued yet)
    + tls_files: the certificate and key to render instead of the settings' own (see nginx.render_tree)

    Renders for the installed nginx version, its upstream at the app instance nginx serves now (a release
    switches it: operations/app.py; a cluster's proxy: every app host at the port this run has it serve,
    ssedeploy/cluster.py), then uploads the files to a staging
    directory and runs one host-side step, detached from the SSH session: back up
    /etc/nginx, swap the staged files in, ``nginx -t``; on failure put the backup back
    and fail with nginx's own message. Nothing is done when the live files match.

    **Example:**

    .. code:: python

        nginx_config(name="nginx config", settings=settings)
    """
    servers = cluster.upstream_servers()
    want, commands, stage, revision = staged(settings, None if servers else served_app_port(settings), state_dir,
                                             tls_live, tls_files, servers)
    # nginx-swap.sh's journal: a swap cut short left /etc/nginx part old, part new, untested.
    want |= {f"{state_dir}/swap-in-progress": None}
    current = host.get_fact(PathStates, paths=sorted(want))
    if current == want:
        host.noop(f"nginx config revision {revision} is live")
        return
    report_differences([path for path in sorted(want) if current.get(path) != want[path]])
    yield from commands
    yield detached(f"ssedeploy-nginx-{revision}",
                   f"/bin/sh {state_dir}/nginx-swap.sh {stage} {settings.nginx.backups} {nginx.LIVE} {state_dir}")
