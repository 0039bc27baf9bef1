"""The Node SSE app as a systemd service bound to 127.0.0.1 (Node from the distro's `nodejs`)."""

from io import StringIO
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from ssedeploy.render import render

EXAMPLE_APP = Path(__file__).resolve().parents[1] / "examples" / "sse-app" / "server.js"
APT_LOCK_WAIT = "-o DPkg::Lock::Timeout=300"


def app_dir(settings) -> str:
    return f"/opt/{settings.app.name}"


def unit(settings) -> str:
    return render("systemd/app.service.j2", settings=settings, app_dir=app_dir(settings))


@deploy("app")
def app(settings):
    name = settings.app.name
    apt.update(name="apt lists are fresh", cache_time=3600)
    apt.packages(name="Install Node.js", packages=["nodejs"], extra_install_args=APT_LOCK_WAIT)
    server.user(name=f"System user {name}", user=name, system=True, shell="/usr/sbin/nologin",
                home="/nonexistent", create_home=False)
    files.directory(name="App directory", path=app_dir(settings), user="root", group="root", mode="755")
    # Root-owned code: the app user can run it but not rewrite it.
    code = files.put(name="App code", src=str(EXAMPLE_APP), dest=f"{app_dir(settings)}/server.js",
                     user="root", group="root", mode="644")
    unit_file = files.put(name="App systemd unit", src=StringIO(unit(settings)),
                          dest=f"/etc/systemd/system/{name}.service", mode="644")
    systemd.daemon_reload(name="systemd daemon-reload", _if=unit_file.did_change)
    systemd.service(name=f"{name} is running and enabled", service=name, running=True, enabled=True)
    systemd.service(name=f"Restart {name} on change", service=name, restarted=True,
                    _if=any_changed(code, unit_file))
