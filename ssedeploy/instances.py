"""The app's two instances on a host: which one is live, and what a run does about them.

A release never restarts the live instance: it starts the new release (or the new env/unit) on the idle
port, checks it there, switches nginx's upstream to it and drains the old one (scripts/app-release.sh).
Which instance is live is read from the host: the port nginx's workers send to (revision-proven), else
the port in the live config files; on a cluster's app host, the port it recorded (its proxies follow it). Pure functions of what the `AppInstances` fact read; tables in
tests/unit/test_instances.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instance:
    active: str = "inactive"  # systemctl is-active: active, activating, deactivating, inactive, failed
    enabled: bool = False
    release: str | None = None  # the release its link names (what it runs, or last ran)
    draining: bool = False      # its drain timer (or the stop the timer started) is pending

    @property
    def running(self) -> bool:
        return self.active in ("active", "activating", "reloading")


@dataclass(frozen=True)
class HostInstances:
    """What the `AppInstances` fact read."""

    served_port: int | None = None  # the upstream port nginx's workers serve (None: nginx did not answer)
    served_revision: str | None = None
    files_port: int | None = None   # the upstream port in the live site file
    recorded_port: int | None = None  # a cluster's app host: the port it recorded live (its proxies follow it)
    instances: dict[int, Instance] = field(default_factory=dict)
    legacy: Instance | None = None  # the single APP.service of ssedeploy before two instances (None: absent)
    current: str | None = None      # the release `current` names
    previous: str | None = None


def live_port(found: HostInstances, ports: tuple[int, int]) -> int | None:
    """The port nginx sends new connections to: what its workers serve, else what its files say; on a
    cluster's app host (which reads neither), the port it recorded."""
    for port in (found.served_port, found.files_port, found.recorded_port):
        if port in ports:
            return port
    return None


def unit_name(app: str, port: int | None) -> str:
    """An instance's unit; port None: the single unit of ssedeploy before two instances."""
    return f"{app}@{port}.service" if port is not None else f"{app}.service"


def drain_name(app: str, port: int | None) -> str:
    """The transient timer (and service) that stops an instance once its drain is over."""
    return f"ssedeploy-{app}-drain-{port if port is not None else 'legacy'}"


@dataclass(frozen=True)
class Release:
    idle: int             # where the release starts and is checked
    live: int | None      # what nginx sends to until the switch (None: nothing yet)
    old: int | None       # the instance to drain after the switch (None: none runs)
    legacy: bool = False  # drain the single unit of ssedeploy before two instances instead


def release_plan(found: HostInstances, ports: tuple[int, int], target: str, pending: bool) -> Release | None:
    """Whether `target` must be released (None: it is live and nothing is owed). `pending`: the unit or the
    environment changed, or a run noted that change and died before releasing it."""
    live = live_port(found, ports)
    if live is None:  # no nginx config names an instance (nginx not there yet): the one that runs, if one does
        running = [p for p in ports if p in found.instances and found.instances[p].running]
        live = running[0] if len(running) == 1 else None
    serving = found.instances.get(live) if live is not None else None
    serving = serving if serving is not None and serving.running else None
    legacy = found.legacy is not None and found.legacy.running and serving is None
    if not (pending or legacy or serving is None or serving.release != target):
        return None
    idle = ports[1] if live == ports[0] else ports[0]
    return Release(idle=idle, live=live, old=live if serving else None, legacy=legacy)


@dataclass(frozen=True)
class Settle:
    """What a run does about instances when no release is owed: converge to the live one."""

    stop: tuple[str, ...] = ()     # not live, running, no drain pending: left by a run that died
    disable: tuple[str, ...] = ()  # not live but enabled (would start at boot)
    enable: str | None = None      # the live one, if not enabled
    record: tuple[str, int] | None = None  # (release, port): live but not recorded (`current` names another)
    remove_legacy: bool = False    # the old single unit's file, once nothing runs it

    def __bool__(self) -> bool:
        return bool(self.stop or self.disable or self.enable or self.record or self.remove_legacy)


def settle_plan(found: HostInstances, ports: tuple[int, int], app: str) -> Settle:
    live = live_port(found, ports)
    serving = found.instances.get(live) if live is not None else None
    if serving is None or not serving.running:
        return Settle()  # nothing of the new layout serves yet: a release (or the legacy unit) does
    stop, disable = [], []
    others = [(unit_name(app, p), i) for p, i in sorted(found.instances.items()) if p != live]
    if found.legacy is not None:
        others.append((unit_name(app, None), found.legacy))
    for unit, inst in others:
        if inst.running and not inst.draining:
            stop.append(unit)
        if inst.enabled:
            disable.append(unit)
    return Settle(
        stop=tuple(stop), disable=tuple(disable),
        enable=None if serving.enabled else unit_name(app, live),
        record=(serving.release, live) if serving.release and serving.release != found.current else None,
        remove_legacy=found.legacy is not None and not found.legacy.running,
    )
