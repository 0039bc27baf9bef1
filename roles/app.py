"""The Node app (zero-dependency example or a real Next.js build) as two instances of a hardened systemd
template unit, <app>@<port>.service, so that a release never stops the one that serves.

Releases are uploaded as one archive to /srv/<app>/releases/<content hash>. A release (new code, a new
environment or unit, a rollback) starts on the idle instance and is checked there (health path and a
first SSE block on every SSE path) before any client can reach it; then nginx's upstream is switched to
it and the old instance drains (ssedeploy/instances.py, scripts/app-release.sh). A release that fails
its check never gets a request. Environment lives in /etc/<app>/env (root:<app>, 0640), secrets
included, never printed and never in the unit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from ssedeploy import nextbuild, release
from ssedeploy.facts import PathStates
from ssedeploy.operations import app_live, app_release, app_settle, host_limits, private_file, system_user
from ssedeploy.paths import NODE_LINK, STATE, app_dir, cache_dir, env_path, restart_marker, unit_path
from ssedeploy.render import render
from ssedeploy.run_results import note
from ssedeploy.settings import SettingsError

# `ssedeploy drift` runs the deploy dry in a CI that may have neither secrets nor the built app.
DRIFT = os.environ.get("SSEDEPLOY_DRIFT") == "1"

ROLE = "app"  # the @deploy's name: pyinfra reports each operation below as "app | <name>"
# Operations the tests look for, by name (UNIT is followed by the unit's path, LIVE by the release).
UNIT = "App systemd unit"
NOTE_PENDING = "Release pending (unit or environment changes)"
LIVE = "Live on the idle instance, checked, switched to, old one draining:"
HELD = "Live on the idle instance, checked, recorded for the proxies:"
SETTLE = "App instances settled"
# The app's idle keep-alive, longer than nginx's upstream keepalive_timeout (60 s): nginx, not Node, closes
# an idle upstream connection, so nginx never reuses a socket Node is just closing (a 502).
KEEP_ALIVE_MS = 65000


def reported(name: str) -> str:
    """An operation's name as pyinfra reports it (log, results): prefixed by the @deploy's name."""
    return f"{ROLE} | {name}"


@dataclass(frozen=True)
class PendingPlan:
    pending: bool  # the app owes a release of its unit or environment, even if its code is live
    mark: bool     # mark it on the host now, before the unit or environment file changes


def pending_plan(*, marker: bool, on_host: Mapping[str, str | None], wanted: Mapping[str, str]) -> PendingPlan:
    """Whether the app owes a release for its unit or environment: `marker`, noted on the host by a run that
    died before releasing; `on_host` / `wanted`, the sha256 of each unit or environment file on the host
    (None: absent) / as this run writes it (a file not in `wanted` is not managed this run)."""
    pending = marker or any(on_host.get(path) != digest for path, digest in wanted.items())
    return PendingPlan(pending=pending, mark=pending and not marker)


def node_bin(settings) -> str:
    """The bin directory of the Node the instance's release was checked with (its NODE_LINK)."""
    return f"{app_dir(settings)}/instances/%i/{NODE_LINK}/bin"


def exec_start(settings) -> str:
    app = settings.app
    if app.start == "standalone":
        return f"{node_bin(settings)}/node server.js"
    if app.start == "next-start":
        return (f"{node_bin(settings)}/node node_modules/next/dist/bin/next start -H {app.bind} "
                f"-p ${{PORT}} --keepAliveTimeout {KEEP_ALIVE_MS}")
    # The unit's PATH (release's Node first) finds the command's `node`, `npm`...: systemd would search its own.
    return f"/usr/bin/env {app.command}"


def unit(settings, nofile: int) -> str:
    return render("systemd/app.service.j2", app=settings.app, app_dir=app_dir(settings),
                  exec_start=exec_start(settings), node_bin=node_bin(settings), env_file=env_path(settings),
                  nofile=nofile, keep_alive_ms=KEEP_ALIVE_MS)


@functools.lru_cache(maxsize=None)
def _inspected(source: str, sse_paths: tuple[str, ...]) -> nextbuild.Inspection:
    return nextbuild.inspect(source, list(sse_paths))


def build_preflight(settings) -> None:
    """Refuse a Next.js build whose SSE paths are prerendered, on the Edge runtime or served by no route, before
    the release leaves the controller (ssedeploy/nextbuild.py); say what else it found."""
    if DRIFT and not os.path.isdir(settings.app.source):
        return
    try:
        found = _inspected(settings.app.source, tuple(settings.site.sse_paths))
    except ValueError as exc:
        raise SettingsError(f"host {host.name}: app.source: {exc}") from None
    if found.refusals:
        raise SettingsError("\n".join(f"host {host.name}: {text}" for text in found.refusals))
    for text in found.notes:
        note(host, text)


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


def reads(settings) -> list:
    """The facts the role reads while pyinfra plans ((fact, args, kwargs); deploy.py reads them in one go):
    the unit, environment and pending-release marker as `app` asks for them."""
    return [(PathStates, (), {"paths": [unit_path(settings), env_path(settings), restart_marker(settings)]})]


@dataclass(frozen=True)
class Owed:
    """What an app host's run makes live once its release is on the host: `release` (None: nothing to
    release, drift mode without the built app), and whether its unit or environment changed (`pending`)."""
    release: str | None
    pending: bool


@deploy(ROLE)
def app(settings, node_runtime, roll: bool = False) -> Owed:
    """The app on this host. `roll`: a cluster's app host, whose release goes live in its batch of the
    rolling release (roles/cluster.py); otherwise it goes live here, nginx on this host switched to it."""
    a = settings.app
    user = a.system_user
    server.group(name=f"Group {user}", group=user, system=True)
    system_user(name=f"System user {user}", user=user, group=user, shell="/usr/sbin/nologin", home="/nonexistent")
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
    # Noted on the host before the unit or environment changes and cleared once a release with them is live:
    # a run that dies in between leaves the note, so the next run releases though no file differs.
    marker = restart_marker(settings)
    texts = {unit_file: unit_text, **({env_path(settings): env_text} if env_text is not None else {})}
    wanted = {path: sha256(text.encode()).hexdigest() for path, text in texts.items()}
    now = host.get_fact(PathStates, paths=[*wanted, marker])
    on_host = {path: state[1] if state and state[0] == "F" else None for path, state in now.items()}
    ahead = pending_plan(marker=now.get(marker) is not None, on_host=on_host, wanted=wanted)
    if ahead.mark:
        server.shell(name=NOTE_PENDING, commands=[f"mkdir -p {STATE} && touch {marker}"])
    if env_text is not None:
        private_file(name=f"App environment {env_path(settings)} (values not shown)", content=env_text,
                     dest=env_path(settings), user="root", group=user, mode="640")
    files.put(name=f"{UNIT} {unit_file}", src=StringIO(unit_text), dest=unit_file, mode="644")
    systemd.daemon_reload(name="systemd daemon-reload", _if=lambda: ahead.pending)

    release_hash = None
    if DRIFT and not os.path.isdir(a.source):
        note(host, f"skipped in drift mode: the release (no built app at {a.source})")
    else:
        archive, content = release.build(a.source)
        release_hash = release.name(content, node_runtime.version if node_runtime.build else None)
        app_release(name=f"Release {release_hash} on the host", archive=archive, release=release_hash,
                    app_dir=app_dir(settings), cache_dir=cache_dir(settings), node_home=node_runtime.home)
    owed = Owed(release_hash, ahead.pending)
    if not roll:
        make_live(settings, owed)
        app_settle(name=SETTLE, settings=settings)
    return owed


def make_live(settings, owed: Owed, hold: bool = False, **arguments) -> None:
    """The release live on the idle instance, checked, switched to (`hold`: a cluster's app host, recorded
    live for its proxies to switch to); the owed unit or environment change done. `arguments`: pyinfra's
    global arguments (`_if`)."""
    if owed.release is None:
        return
    app_live(name=f"{HELD if hold else LIVE} {owed.release}", settings=settings, release=owed.release,
             pending=owed.pending, hold=hold, **arguments)
    files.file(name="Release pending done", path=restart_marker(settings), present=False, **arguments)
