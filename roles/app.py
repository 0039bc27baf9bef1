"""The Node app (zero-dependency example or a real Next.js build) as a hardened systemd service.

Releases are uploaded as one archive to /srv/<app>/releases/<content hash> and made
live by switching the `current` link; the deploy then checks the app (health path and
a first SSE block on loopback) and switches back to the previous release if the check
fails. Environment lives in /etc/<app>/env (root:<app>, 0640), secrets included,
never printed and never in the unit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from roles import APT_LOCK_WAIT
from ssedeploy import release
from ssedeploy.facts import PathStates
from ssedeploy.operations import app_activate, app_release, host_limits, private_file
from ssedeploy.paths import STATE, app_dir, cache_dir, env_path, restart_marker, unit_path
from ssedeploy.render import render
from ssedeploy.run_results import note
from ssedeploy.settings import SettingsError

# `ssedeploy drift` runs the deploy dry in a CI that may have neither secrets nor the built app.
DRIFT = os.environ.get("SSEDEPLOY_DRIFT") == "1"

ROLE = "app"  # the @deploy's name: pyinfra reports each operation below as "app | <name>"
# Operations the tests look for, by name (UNIT is followed by the unit's path).
UNIT = "App systemd unit"
NOTE_RESTART = "Restart pending (unit or environment changes)"
RESTART = "Restart and check (unit or environment changed)"
# The app's idle keep-alive, longer than nginx's upstream keepalive_timeout (60 s): nginx, not Node, closes
# an idle upstream connection, so nginx never reuses a socket Node is just closing (a 502).
KEEP_ALIVE_MS = 65000


def reported(name: str) -> str:
    """An operation's name as pyinfra reports it (log, results): prefixed by the @deploy's name."""
    return f"{ROLE} | {name}"


@dataclass(frozen=True)
class RestartPlan:
    pending: bool  # the app owes a restart: systemd reloads its units before a release goes live
    mark: bool     # mark it on the host now, before the unit or environment file changes
    restart: bool  # restart and check the app (a release going live has not just done it)


def restart_plan(*, marker: bool, on_host: Mapping[str, str | None], wanted: Mapping[str, str],
                 went_live: bool = False) -> RestartPlan:
    """Whether the app restarts: `marker`, a restart noted on the host by a run that died before it;
    `on_host` / `wanted`, the sha256 of each unit or environment file on the host (None: absent) / as this
    run writes it (a file not in `wanted` is not managed this run); `went_live`, a new release went live,
    which restarted the app."""
    pending = marker or any(on_host.get(path) != digest for path, digest in wanted.items())
    return RestartPlan(pending=pending, mark=pending and not marker, restart=pending and not went_live)


def exec_start(app) -> str:
    if app.start == "standalone":
        return "/usr/bin/node server.js"
    if app.start == "next-start":
        return ("/usr/bin/node node_modules/next/dist/bin/next start -H 127.0.0.1 "
                f"-p {app.port} --keepAliveTimeout {KEEP_ALIVE_MS}")
    return app.command


def unit(settings, nofile: int) -> str:
    return render("systemd/app.service.j2", app=settings.app, app_dir=app_dir(settings),
                  exec_start=exec_start(settings.app), env_file=env_path(settings), nofile=nofile,
                  keep_alive_ms=KEEP_ALIVE_MS)


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


@deploy(ROLE)
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
        note(host, f"skipped in drift mode: {env_path(settings)} (secrets are not available here)")
    unit_file = unit_path(settings)
    unit_text = unit(settings, host_limits(settings).worker_rlimit_nofile)
    env_text = release.env_file(values) if values is not None else None
    # Noted on the host before the unit or environment changes and cleared once the app restarted:
    # a run that dies in between leaves the note, so the next run restarts though no file differs.
    marker = restart_marker(settings)
    texts = {unit_file: unit_text, **({env_path(settings): env_text} if env_text is not None else {})}
    wanted = {path: sha256(text.encode()).hexdigest() for path, text in texts.items()}
    now = host.get_fact(PathStates, paths=[*wanted, marker])
    on_host = {path: state[1] if state and state[0] == "F" else None for path, state in now.items()}

    def decide(went_live: bool = False) -> RestartPlan:
        return restart_plan(marker=now.get(marker) is not None, on_host=on_host, wanted=wanted,
                            went_live=went_live)

    ahead = decide()
    if ahead.mark:
        server.shell(name=NOTE_RESTART, commands=[f"mkdir -p {STATE} && touch {marker}"])
    if env_text is not None:
        private_file(name=f"App environment {env_path(settings)} (values not shown)", content=env_text,
                     dest=env_path(settings), user="root", group=user, mode="640")
    files.put(name=f"{UNIT} {unit_file}", src=StringIO(unit_text), dest=unit_file, mode="644")
    systemd.daemon_reload(name="systemd daemon-reload", _if=lambda: ahead.pending)

    if DRIFT and not os.path.isdir(a.source):
        note(host, f"skipped in drift mode: the release (no built app at {a.source})")
        systemd.service(name=f"{a.name} is enabled and running", service=a.name, running=True, enabled=True)
        return
    archive, release_hash = release.build(a.source)
    app_release(name=f"Release {release_hash} on the host", archive=archive, release=release_hash,
                app_dir=app_dir(settings), cache_dir=cache_dir(settings))
    live = app_activate(name=f"Release {release_hash} live and checked", settings=settings, release=release_hash,
                        app_dir=app_dir(settings))
    app_activate(name=RESTART, settings=settings, release=release_hash, app_dir=app_dir(settings), force=True,
                 _if=lambda: decide(went_live=live.did_change()).restart)
    files.file(name="Restart done", path=marker, present=False)
    systemd.service(name=f"{a.name} is enabled and running", service=a.name, running=True, enabled=True)
