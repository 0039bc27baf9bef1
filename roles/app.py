"""The Node app (zero-dependency example or a real Next.js build) as a hardened systemd service.

Releases are uploaded as one archive to /srv/<app>/releases/<content hash> and made
live by switching the `current` link; the deploy then checks the app (health path and
a first SSE block on loopback) and switches back to the previous release if the check
fails. Environment lives in /etc/<app>/env (root:<app>, 0640), secrets included,
never printed and never in the unit.
"""

from __future__ import annotations

import os
from hashlib import sha256
from io import StringIO

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from roles import APT_LOCK_WAIT
from ssedeploy import release
from ssedeploy.facts import PathStates
from ssedeploy.operations import APP_STATE, app_activate, app_release, host_limits, private_file
from ssedeploy.render import render
from ssedeploy.settings import SettingsError

# `ssedeploy drift` runs the deploy dry in a CI that may have neither secrets nor the built app.
DRIFT = os.environ.get("SSEDEPLOY_DRIFT") == "1"


def app_dir(settings) -> str:
    return f"/srv/{settings.app.name}"


def env_path(settings) -> str:
    return f"/etc/{settings.app.name}/env"


def exec_start(app) -> str:
    if app.start == "standalone":
        return "/usr/bin/node server.js"
    if app.start == "next-start":
        return ("/usr/bin/node node_modules/next/dist/bin/next start -H 127.0.0.1 "
                f"-p {app.port} --keepAliveTimeout 65000")
    return app.command


def unit(settings, nofile: int) -> str:
    return render("systemd/app.service.j2", app=settings.app, app_dir=app_dir(settings),
                  exec_start=exec_start(settings.app), env_file=env_path(settings), nofile=nofile)


def environment(settings, host_name: str = "?") -> dict[str, str]:
    """Plain env from settings, secrets from the controller's environment or the secrets file."""
    app = settings.app
    values = dict(app.env)
    from_file = release.read_dotenv(app.secrets_file) if app.secrets_file and os.path.exists(app.secrets_file) else {}
    for name in app.secret_env:
        if name in os.environ:
            values[name] = os.environ[name]
        elif name in from_file:
            values[name] = from_file[name]
        else:
            where = f"the environment or {app.secrets_file}" if app.secrets_file else "the environment"
            raise SettingsError(f"host {host_name}: app.secret_env: {name} has no value in {where}")
    return values


@deploy("app")
def app(settings):
    a = settings.app
    user = a.system_user
    apt.update(name="apt lists are fresh", cache_time=3600)
    apt.packages(name="Install Node.js (distro)", packages=["nodejs"], extra_install_args=APT_LOCK_WAIT)
    server.group(name=f"Group {user}", group=user, system=True)
    server.user(name=f"System user {user}", user=user, group=user, system=True, shell="/usr/sbin/nologin",
                home="/nonexistent", create_home=False)
    # Root-owned code: the app can run its release but not rewrite it.
    files.directory(name="App directory", path=app_dir(settings), user="root", group="root", mode="755")
    files.directory(name="App config directory", path=f"/etc/{a.name}", user="root", group=user, mode="750")
    try:
        values = environment(settings, host.name)
    except SettingsError:
        if not DRIFT:
            raise
        values = None
        logger.info(f"    [{host.name}] skipped in drift mode: {env_path(settings)} (secrets are not available here)")
    unit_path = f"/etc/systemd/system/{a.name}.service"
    unit_text = unit(settings, host_limits(settings).worker_rlimit_nofile)
    env_text = release.env_file(values) if values is not None else None
    # Noted on the host before the unit or environment changes and cleared once the app restarted:
    # a run that dies in between leaves the note, so the next run restarts though no file differs.
    marker = f"{APP_STATE}/{a.name}.restart-pending"
    want = {unit_path: unit_text, **({env_path(settings): env_text} if env_text is not None else {})}
    now = host.get_fact(PathStates, paths=[*want, marker])
    pending = now[marker] is not None or any(now[p] != ("F", sha256(t.encode()).hexdigest())
                                             for p, t in want.items())
    if pending and now[marker] is None:
        server.shell(name="Restart pending (unit or environment changes)",
                     commands=[f"mkdir -p {APP_STATE} && touch {marker}"])
    if env_text is not None:
        private_file(name=f"App environment {env_path(settings)} (values not shown)", content=env_text,
                     dest=env_path(settings), user="root", group=user, mode="640")
    files.put(name=f"App systemd unit {unit_path}", src=StringIO(unit_text), dest=unit_path, mode="644")
    systemd.daemon_reload(name="systemd daemon-reload", _if=lambda: pending)

    if DRIFT and not os.path.isdir(a.source):
        logger.info(f"    [{host.name}] skipped in drift mode: the release (no built app at {a.source})")
        systemd.service(name=f"{a.name} is enabled and running", service=a.name, running=True, enabled=True)
        return
    archive, release_hash = release.build(a.source)
    app_release(name=f"Release {release_hash} on the host", archive=archive, release=release_hash,
                           app_dir=app_dir(settings), cache_dir=f"/var/cache/{a.name}")
    live = app_activate(name=f"Release {release_hash} live and checked", settings=settings, release=release_hash,
                        app_dir=app_dir(settings))
    app_activate(name="Restart and check (unit or environment changed)", settings=settings,
                 release=release_hash, app_dir=app_dir(settings), force=True,
                 _if=[lambda: pending, lambda: not live.did_change()])
    files.file(name="Restart done", path=marker, present=False)
    systemd.service(name=f"{a.name} is enabled and running", service=a.name, running=True, enabled=True)
