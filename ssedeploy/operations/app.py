"""An app release on a host: uploaded once and unpacked beside the others (`app_release`), then made live by
switching `current`, restarted and checked, and switched back if the check fails (`app_activate`); with
``release=None`` the previous release goes live again: the rollback `ssedeploy rollback` runs. The
host-side step is scripts/app-activate.sh."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from ..facts import PathStates
from ..paths import STATE
from ..settings import Settings
from .util import SCRIPTS, detached, report_differences


@operation()
def app_release(archive: str, release: str, app_dir: str, cache_dir: str):
    """
    Upload a release archive once and unpack it to APP_DIR/releases/RELEASE (not yet live).

    + archive: the .tar.gz built on the controller (ssedeploy.release.build)
    + release: its content hash, the release's directory name
    + app_dir: the app's directory on the host
    + cache_dir: the app's writable cache (systemd CacheDirectory); a Next.js release's .next/cache links there
    """
    target = f"{app_dir}/releases/{release}"
    if host.get_fact(PathStates, paths=[target]).get(target) == ("D", ""):
        host.noop(f"release {release} is on the host")
        return
    upload = f"{STATE}/upload-{release}.tar.gz"
    yield f"mkdir -p {STATE} {app_dir}/releases"
    yield FileUploadCommand(archive, upload)
    yield (
        f"rm -rf {target}.tmp && mkdir -p {target}.tmp && tar -xzf {upload} -C {target}.tmp --no-same-owner "
        f"&& if [ -d {target}.tmp/.next ]; then rm -rf {target}.tmp/.next/cache "
        f"&& ln -s {cache_dir} {target}.tmp/.next/cache; fi "
        f"&& mv -T {target}.tmp {target} && rm -f {upload}"
    )


@operation()
def app_activate(settings: Settings, release: str | None, app_dir: str, force: bool = False):
    """
    Make RELEASE live (or, with ``release=None``, the previous one), restart, check, switch back on failure.

    + settings: the host's ssedeploy settings
    + release: the release hash to make live; None rolls back to the previous release
    + app_dir: the app's directory on the host
    + force: restart and check even when the release is already live
    """
    # app-activate.sh's journal: an activation cut short may have switched `current` without a checked restart.
    journal = f"{app_dir}/activate-in-progress"
    states = host.get_fact(PathStates, paths=[f"{app_dir}/current", journal])
    current = states.get(f"{app_dir}/current")
    if release and current == ("L", f"releases/{release}") and states.get(journal) is None and not force:
        host.noop(f"release {release} is live")
        return
    if release and not force:
        report_differences([f"{app_dir}/current -> releases/{release} (now {current[1] if current else 'none'})"])
    app = settings.app
    yield FileUploadCommand(str(SCRIPTS / "app-check.js"), f"{STATE}/app-check.js")
    yield FileUploadCommand(str(SCRIPTS / "app-activate.sh"), f"{STATE}/app-activate.sh")
    yield detached(
        f"ssedeploy-{app.name}-activate",
        f"/bin/sh {STATE}/app-activate.sh {app_dir} {app.name}.service {release or '--previous'} "
        f"{app.keep_releases} {app.port} {app.health_path} {settings.site.sse_paths[0]} {STATE}/app-check.js",
    )
