"""Watching a release from the clients' side, for the release and fault tests: a fleet of EventSource-like
clients streams through nginx while something changes; the figures of that window; waits for the end of a
release (polled until a deadline)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from roles import app as app_role

from .eventsource import Fleet, Report, report
from .helpers import REPO, Ran, instances
from .polling import wait_until

CLIENTS = 200


def build(tmp: Path, mark: str) -> str:
    """A release of the example app that differs from the others (its content hash) by one file."""
    source = tmp / f"app-{mark}"
    if not source.exists():
        shutil.copytree(REPO / "examples" / "sse-app", source)
        (source / "release-mark.txt").write_text(mark + "\n")
    return str(source)


def settled(host, settings) -> None:
    """Wait until a release is over: only the live instance runs, no drain is pending, and no old nginx
    worker holds a stream."""
    def done():
        found = instances(host, settings)
        others = [i for p, i in found.instances.items() if p != found.served_port and (i.running or i.draining)]
        legacy = found.legacy is not None and found.legacy.running
        old_workers = host.run("pgrep -c -f '^nginx: worker process is shutting down' || true").stdout.strip()
        return not others and not legacy and old_workers in ("", "0")
    wait_until(done, 40, "the old instance drained and stopped, and nginx's old workers gone")


def watched(address: str | Sequence[str], change: Callable[[], object], count: int = CLIENTS) -> tuple[Report, object]:
    """Run `change()` while `count` clients stream (split evenly over several addresses: a cluster's proxies)
    and a new stream opens every 0.5 s through each: the figures of the window from just before the change
    until it returned (and every stream had an event since), and what `change` returned."""
    addresses = [address] if isinstance(address, str) else list(address)
    fleets = [Fleet(a, 80, "/api/stream", count // len(addresses), stagger_s=0.005).start() for a in addresses]
    probers = []
    try:
        for fleet in fleets:
            fleet.wait_streaming(30)
        probers = [fleet.prober(every_s=0.5, timeout_s=10).start() for fleet in fleets]
        since = Fleet.mark()
        outcome = change()
        until = Fleet.mark()
        # A stream cut by the release reconnects after its retry: wait for each client's next event (one
        # that gave up never has one: the report counts it).
        everyone = [c for fleet in fleets for c in fleet.clients]
        wait_until(lambda: all(c.gave_up or (c.events and c.events[-1][1] > until) for c in everyone), 30,
                   "an event after the change on every stream")
    finally:
        clients = [c for fleet in fleets for c in fleet.stop()]
    return report(clients, [p for prober in probers for p in prober.stop()], since, until), outcome


def assert_unnoticed(r: Report, cut: bool = True, late_s: float = 1.0) -> None:
    """What clients may see of a release (issue 12, point 2); `cut`: the old instance retired in the window,
    so every stream was cut once, and came back; `late_s`: how much longer than its `retry:` a cut stream
    may wait for its next event."""
    assert r.non_200 == 0 and r.fallback_answers == 0 and r.gave_up == 0, r
    assert r.lost_ids == 0 and r.repeated_ids == 0, r
    assert r.clients_cut == (r.clients if cut else 0), r
    assert r.max_cuts_per_client <= 1 and r.clients_unrecovered == 0, r
    assert r.worst_gap_minus_retry_s is None or r.worst_gap_minus_retry_s <= late_s, r
    assert r.probes > 0 and r.probes_without_event == 0 and r.probe_worst_first_event_s <= 3, r


def release_op(ran: Ran, host_name: str) -> str:
    """The name of the app role's release operation in a run (it ends with the release id)."""
    ops = [o["name"] for o in ran.results.operations(host_name)
           if o["name"].startswith(app_role.reported(app_role.LIVE))]
    assert len(ops) == 1, f"expected one release operation, found {ops}"
    return ops[0]
