"""What `ssedeploy rollback INVENTORY [--to ID]` runs with pyinfra: make a kept release live again through the
same path as a release (idle instance, check, switch, drain; in a cluster, the same rolling release over the
app hosts). Without --to ($SSEDEPLOY_ROLLBACK_TO), the previous release; an id may be shortened to any
unique prefix, as git allows."""

import os
import shlex

from pyinfra import host
from pyinfra.operations import server

from roles.app import Owed
from roles.cluster import roll
from ssedeploy import cluster
from ssedeploy.deploy_lock import hold
from ssedeploy.facts import AppReleases
from ssedeploy.operations import app_live, app_settle
from ssedeploy.operations.app import instances_on_host
from ssedeploy.paths import app_dir
from ssedeploy.run_results import record_run
from ssedeploy.sudo_check import check as check_sudo

REFUSED = "Rollback target is a kept release"
topology = cluster.load()
settings = cluster.settings_of(host.name)
record_run(host.state)
check_sudo(host)
hold(host)


def target() -> tuple[str | None, str]:
    """(the release to make live, or None and why not)."""
    kept = sorted(host.get_fact(AppReleases, app_dir=app_dir(settings))["kept"])
    wanted = os.environ.get("SSEDEPLOY_ROLLBACK_TO")
    if not wanted:
        previous = instances_on_host(settings).previous
        return (previous, "") if previous else (None, "there is no previous release to roll back to")
    found = [r for r in kept if r.startswith(wanted)]
    if len(found) == 1:
        return found[0], ""
    what = "is not among" if not found else "matches more than one of"
    return None, f"release {wanted!r} {what} the releases kept on the host: {', '.join(kept) or 'none'}"


release, why = target() if topology.is_app(host.name) else (None, "")
if why:
    server.shell(name=REFUSED, commands=[f"echo {shlex.quote(f'host {host.name}: {why}')} >&2; exit 1"])
elif not topology.clustered:
    app_live(name=f"Release {release} live again (idle instance, checked, switched to)", settings=settings,
             release=release)
    app_settle(name="App instances settled", settings=settings)
if topology.clustered:  # a refused host stops the roll before any batch starts
    roll(settings, Owed(release, False) if release else None)
