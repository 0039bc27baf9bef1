"""An app release on a host: uploaded once and unpacked beside the others (`app_release`), then made live on
the idle instance, checked, switched to and the old instance drained (`app_live`, scripts/app-release.sh;
`ssedeploy rollback` runs it too; a cluster's app host drains once its proxies switched: `app_drain`);
`app_settle` converges what a run that died left behind."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from .. import cluster, nginx
from ..facts import AppReleases, NginxVersion, PathStates, revision_request
from ..instances import HostInstances, drain_name, live_port, release_plan, settle_plan, unit_name
from ..paths import NGINX_STATE, NODE_LINK, STATE, app_dir, legacy_unit_path, node_root
from ..release import content_of
from ..settings import Settings
from .nginx_tree import staged
from .util import SCRIPTS, detached, report_differences

# How long a new instance has to answer its health path (a Next.js start takes a few seconds).
CHECK_SECONDS = 30


@operation()
def app_release(archive: str, release: str, app_dir: str, cache_dir: str, node_home: str):
    """
    Upload a release archive once and unpack it to APP_DIR/releases/RELEASE (not yet live), linked to the
    Node it runs (NODE_LINK). A release of the same build for another Node is copied on the host instead.

    + archive: the .tar.gz built on the controller (ssedeploy.release.build)
    + release: its name (ssedeploy.release.name), the release's directory name
    + app_dir: the app's directory on the host
    + cache_dir: the app's writable cache (systemd CacheDirectory); a Next.js release's .next/cache links there
    + node_home: the Node this release runs (an official build's directory, or /usr for the distro's)
    """
    target = f"{app_dir}/releases/{release}"
    if host.get_fact(PathStates, paths=[target]).get(target) == ("D", ""):
        host.noop(f"release {release} is on the host")
        return
    twin = next((r for r in sorted(host.get_fact(AppReleases, app_dir=app_dir)["kept"])
                 if content_of(r) == content_of(release)), None)
    yield f"mkdir -p {STATE} {app_dir}/releases && rm -rf {target}.tmp"
    if twin:
        yield f"cp -a {app_dir}/releases/{twin} {target}.tmp && rm -f {target}.tmp/{NODE_LINK}"
    else:
        upload = f"{STATE}/upload-{release}.tar.gz"
        yield FileUploadCommand(archive, upload)
        yield (
            f"mkdir -p {target}.tmp && tar -xzf {upload} -C {target}.tmp --no-same-owner && rm -f {upload} "
            f"&& if [ -d {target}.tmp/.next ]; then rm -rf {target}.tmp/.next/cache "
            f"&& ln -s {cache_dir} {target}.tmp/.next/cache; fi"
        )
    yield f"ln -s {node_home} {target}.tmp/{NODE_LINK} && mv -T {target}.tmp {target}"


def instances_on_host(settings: Settings) -> HostInstances:
    return cluster.instances(host, settings)


@operation()
def app_live(settings: Settings, release: str, pending: bool = False, hold: bool = False):
    """
    Make RELEASE live without stopping what serves: start it on the idle instance, check it there, switch
    nginx's upstream to it, drain the old one. Nothing is done when RELEASE is what nginx sends to.

    + settings: the host's ssedeploy settings
    + release: the release hash (on the host already: app_release)
    + pending: release even if RELEASE is live (its unit or environment changed)
    + hold: a cluster's app host: start, check and record it live, no more; its proxies switch to it, then
      `app_drain` drains the old instance (roles/cluster.py)
    """
    app = settings.app
    found = instances_on_host(settings)
    plan = release_plan(found, app.instance_ports, release, pending)
    if plan is None:
        host.noop(f"release {release} is live on port {live_port(found, app.instance_ports)}")
        return
    report_differences([f"{app_dir(settings)}/instances/{plan.idle} -> releases/{release}, then nginx's upstream -> "
                        f"port {plan.idle} (now {plan.live or 'none'})"])
    yield FileUploadCommand(str(SCRIPTS / "app-check.js"), f"{STATE}/app-check.js")
    yield FileUploadCommand(str(SCRIPTS / "app-release.sh"), f"{STATE}/app-release.sh")
    switch, fetch = "-", "-"
    if not hold and host.get_fact(NginxVersion):
        _, commands, stage, _ = staged(settings, plan.idle)
        yield from commands
        yield FileUploadCommand(str(SCRIPTS / "revision-wait.sh"), f"{NGINX_STATE}/revision-wait.sh")
        switch = f"{stage}:{settings.nginx.backups}:{nginx.LIVE}:{NGINX_STATE}"
        fetch = revision_request(settings.site.revision_port)
    old = None if plan.legacy else plan.old  # the port of what serves; None: the legacy unit (or nothing)
    old_unit = unit_name(app.name, old) if plan.legacy or plan.old else "-"
    yield detached(f"ssedeploy-{app.name}-release", shlex.join([
        "/bin/sh", f"{STATE}/app-release.sh", *(["--hold"] if hold else []), app_dir(settings), release, str(plan.idle),
        unit_name(app.name, plan.idle), drain_name(app.name, plan.idle), old_unit, drain_name(app.name, old),
        str(app.drain_seconds), str(app.keep_releases), node_root(settings), switch, fetch,
        app.bind, app.health_path, str(CHECK_SECONDS), f"{STATE}/app-check.js", *settings.site.sse_paths,
    ]))


@operation()
def app_drain(settings: Settings):
    """
    A cluster's app host once every proxy sends to the instance it recorded live: drain the other one if
    it still runs (stopped after app.drain_seconds, so its streams end with a short `retry:` and come back
    through the proxies), and keep the newest releases (scripts/app-release.sh --drain).

    + settings: the host's ssedeploy settings
    """
    app = settings.app
    found = instances_on_host(settings)
    live = live_port(found, app.instance_ports)
    old = [p for p, inst in sorted(found.instances.items()) if p != live and inst.running and not inst.draining]
    if live is None or not old:
        host.noop("nothing to drain")
        return
    report_differences([f"{unit_name(app.name, old[0])} (drained: the proxies send to port {live})"])
    yield FileUploadCommand(str(SCRIPTS / "app-release.sh"), f"{STATE}/app-release.sh")
    yield shlex.join(["/bin/sh", f"{STATE}/app-release.sh", "--drain", app_dir(settings), unit_name(app.name, old[0]),
                      drain_name(app.name, old[0]), str(app.drain_seconds), str(app.keep_releases),
                      node_root(settings)])


@operation()
def app_settle(settings: Settings):
    """
    Converge the instances to the one nginx sends to: stop an old one no drain is pending for (a run died
    before draining it), start only the live one at boot, record its release (`current`, `previous`, the
    history), and remove the single unit of ssedeploy before two instances once nothing runs it.

    + settings: the host's ssedeploy settings
    """
    found = instances_on_host(settings)
    todo = settle_plan(found, settings.app.instance_ports, settings.app.name)
    if not todo:
        host.noop("the app's instances are settled")
        return
    report_differences([*(f"{u} (running, nothing drains it)" for u in todo.stop),
                        *(f"{u} (enabled)" for u in todo.disable), *([f"{todo.enable} (not enabled)"] if todo.enable else []),
                        *([f"{app_dir(settings)}/current"] if todo.record else []),
                        *([legacy_unit_path(settings)] if todo.remove_legacy else [])])
    for unit in todo.stop:
        yield f"systemctl stop {unit}"
    for unit in todo.disable:
        yield f"systemctl disable --quiet {unit}"
    if todo.enable:
        yield f"systemctl enable --quiet {todo.enable}"
    if todo.record:
        release, port = todo.record
        yield FileUploadCommand(str(SCRIPTS / "app-release.sh"), f"{STATE}/app-release.sh")
        yield f"/bin/sh {STATE}/app-release.sh --record {app_dir(settings)} {release} {port}"
    if todo.remove_legacy:
        yield f"rm -f {legacy_unit_path(settings)} && systemctl daemon-reload"
