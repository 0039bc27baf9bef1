"""Where ssedeploy keeps things on a host, each defined once: roles, operations, rollback and tests read them here.

(What ssedeploy writes into /etc/nginx is in ssedeploy/nginx.py.)
"""

from __future__ import annotations

from .instances import unit_name
from .settings import Settings

# ssedeploy's own state on a host: uploads, host-side scripts, notes between runs. Nothing here is live config.
STATE = "/var/lib/ssedeploy"
# The nginx tree's staging, backups and the revision of the live files: outside /etc/nginx, so no include glob
# ever loads them.
NGINX_STATE = f"{STATE}/nginx"
# Where ssedeploy puts the app's units.
SYSTEMD_UNITS = "/etc/systemd/system"


def app_dir(settings: Settings) -> str:
    """The app's releases and its `current` link."""
    return f"/srv/{settings.app.name}"


def env_path(settings: Settings) -> str:
    return f"/etc/{settings.app.name}/env"


def unit_path(settings: Settings) -> str:
    """The app's template unit: one instance per port (APP@PORT.service)."""
    return f"{SYSTEMD_UNITS}/{settings.app.name}@.service"


def legacy_unit_path(settings: Settings) -> str:
    """The single unit of ssedeploy before two instances: stopped after the first release, then removed."""
    return f"{SYSTEMD_UNITS}/{unit_name(settings.app.name, None)}"


def history_path(settings: Settings) -> str:
    """One line per release made live: `WHEN RELEASE PORT` (what `ssedeploy releases` lists)."""
    return f"{app_dir(settings)}/history"


def cache_dir(settings: Settings) -> str:
    """The app's writable cache (the unit's CacheDirectory)."""
    return f"/var/cache/{settings.app.name}"


def restart_marker(settings: Settings) -> str:
    """Noted before the app's unit or environment changes, removed once a release with them went live
    (roles/app.py)."""
    return f"{STATE}/{settings.app.name}.restart-pending"


def node_root(settings: Settings) -> str:
    """Official Node.js builds the app's releases run, side by side: NODE_ROOT/vX.Y.Z-linux-ARCH."""
    return f"{app_dir(settings)}/node"


# In each release, a link to the Node it was checked with (a build under node_root, or /usr for the distro's):
# the unit runs <release>/NODE_LINK/bin/node, so a rollback brings its Node back too.
NODE_LINK = ".ssedeploy-node"
DISTRO_NODE_HOME = "/usr"
