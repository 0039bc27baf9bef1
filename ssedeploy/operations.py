"""pyinfra operations ssedeploy adds where pyinfra has none (they compose with _if, --dry, --diff)."""

from __future__ import annotations

import hashlib
import secrets
from io import StringIO
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, operation

from . import nginx
from .facts import CpuCount, FileMeta, NginxVersion, NofileHardLimit, PathStates
from .settings import Settings

SWAP_SCRIPT = Path(__file__).with_name("scripts") / "nginx-swap.sh"
LIVE = nginx.LIVE


def report_differences(paths: list[str]) -> None:
    """Name what an operation would change, once, while pyinfra plans (what `drift` lists)."""
    if paths and not host.state.is_executing:
        logger.info(f"    [{host.name}] differs: {', '.join(paths)}")


def detached(name: str, command: str) -> str:
    """Run `command` as a transient systemd unit and wait for it: a dropped SSH connection cannot cut it
    in half, and its output and exit status still come back."""
    return f"systemd-run --quiet --wait --pipe --collect --unit={name}-{secrets.token_hex(3)} {command}"


def host_limits(settings: Settings) -> nginx.Limits:
    return nginx.limits(settings, host.get_fact(CpuCount), host.get_fact(NofileHardLimit))


@operation()
def nginx_config(settings: Settings, state_dir: str = "/var/lib/ssedeploy/nginx"):
    """
    Put ssedeploy's nginx files live only if the whole tree passes ``nginx -t``.

    + settings: the host's ssedeploy settings
    + state_dir: where staging, backups and the live revision are kept (outside /etc/nginx)

    Renders for the installed nginx version, then uploads the files to a staging
    directory and runs one host-side step, detached from the SSH session: back up
    /etc/nginx, swap the staged files in, ``nginx -t``; on failure put the backup back
    and fail with nginx's own message. Nothing is done when the live files match.

    **Example:**

    .. code:: python

        nginx_config(name="nginx config", settings=settings)
    """
    version = host.get_fact(NginxVersion) or settings.nginx.version
    files, revision = nginx.render_tree(settings, version, host_limits(settings))
    want = {f"{LIVE}/{rel}": ("F", hashlib.sha256(text.encode()).hexdigest()) for rel, text in files.items()}
    want |= {f"{LIVE}/{rel}": ("L", target) for rel, target in nginx.LINKS.items()}
    want |= {f"{LIVE}/{rel}": None for rel in nginx.REMOVED}
    current = host.get_fact(PathStates, paths=sorted(want))
    if current == want:
        host.noop(f"nginx config revision {revision} is live")
        return
    report_differences([path for path in sorted(want) if current.get(path) != want[path]])

    stage = f"{state_dir}/stage-{revision}"
    dirs = sorted({str(Path(f"{stage}/files/{rel}").parent) for rel in files})
    yield f"rm -rf {stage} && mkdir -p -m 0700 {stage} && mkdir -p {' '.join(dirs)}"
    for rel, text in files.items():
        yield FileUploadCommand(StringIO(text), f"{stage}/files/{rel}")
    links = "".join(f"{rel} {target}\n" for rel, target in nginx.LINKS.items())
    yield FileUploadCommand(StringIO(links), f"{stage}/links")
    yield FileUploadCommand(StringIO("".join(f"{rel}\n" for rel in nginx.REMOVED)), f"{stage}/remove")
    yield FileUploadCommand(StringIO(revision + "\n"), f"{stage}/revision")
    yield FileUploadCommand(str(SWAP_SCRIPT), f"{state_dir}/nginx-swap.sh")
    yield detached(f"ssedeploy-nginx-{revision}", f"/bin/sh {state_dir}/nginx-swap.sh {stage} {settings.nginx.backups}")


APP_STATE = "/var/lib/ssedeploy"
SCRIPTS = Path(__file__).with_name("scripts")


@operation()
def private_file(content: str, dest: str, user: str = "root", group: str = "root", mode: str = "600"):
    """
    A file whose content is never shown (no ``--diff``, no output): for secrets.

    + content: the file's text
    + dest: path on the host
    + user/group/mode: ownership and mode
    """
    want = ("F", hashlib.sha256(content.encode()).hexdigest())
    current = host.get_fact(PathStates, paths=[dest]).get(dest)
    if current == want and host.get_fact(FileMeta, path=dest) == (user, group, mode.lstrip("0") or "0"):
        host.noop(f"{dest} is current")
        return
    report_differences([f"{dest} (content not shown)"])
    yield FileUploadCommand(StringIO(content), dest)
    yield f"chown {user}:{group} {dest} && chmod {mode} {dest}"


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
    upload = f"{APP_STATE}/upload-{release}.tar.gz"
    yield f"mkdir -p {APP_STATE} {app_dir}/releases"
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
    current = host.get_fact(PathStates, paths=[f"{app_dir}/current"]).get(f"{app_dir}/current")
    if release and current == ("L", f"releases/{release}") and not force:
        host.noop(f"release {release} is live")
        return
    if release and not force:
        report_differences([f"{app_dir}/current -> releases/{release} (now {current[1] if current else 'none'})"])
    app = settings.app
    yield FileUploadCommand(str(SCRIPTS / "app-check.js"), f"{APP_STATE}/app-check.js")
    yield FileUploadCommand(str(SCRIPTS / "app-activate.sh"), f"{APP_STATE}/app-activate.sh")
    yield detached(
        f"ssedeploy-{app.name}-activate",
        f"/bin/sh {APP_STATE}/app-activate.sh {app_dir} {app.name}.service {release or '--previous'} "
        f"{app.keep_releases} {app.port} {app.health_path} {settings.site.sse_paths[0]}",
    )
