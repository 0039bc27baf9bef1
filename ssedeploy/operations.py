"""pyinfra operations ssedeploy adds where pyinfra has none (they compose with _if, --dry, --diff)."""

from __future__ import annotations

import hashlib
import secrets
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from . import nginx
from .facts import CpuCount, NginxVersion, NofileHardLimit, PathStates
from .settings import Settings

SWAP_SCRIPT = Path(__file__).with_name("scripts") / "nginx-swap.sh"
LIVE = "/etc/nginx"


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
    unit = f"ssedeploy-nginx-{revision}-{secrets.token_hex(3)}"
    yield (
        f"systemd-run --quiet --wait --pipe --collect --unit={unit} "
        f"/bin/sh {state_dir}/nginx-swap.sh {stage} {settings.nginx.backups}"
    )
