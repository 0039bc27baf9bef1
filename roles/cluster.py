"""A cluster's rolling release (ssedeploy/topology.py): the app hosts `app.rolling_batch` at a time, each batch

1. started on each host's idle instance, checked there and recorded live on the host (`app_live` with
   hold: no client reaches it yet; the instance that serves keeps serving);
2. switched to on every proxy: a validated swap whose upstream names the batch at its new ports, a graceful
   reload and proof that the new workers serve the new revision (new streams go to the new instances; the
   old instances' streams stay on nginx's old workers);

and once every batch is switched, every old instance drains: it is stopped after app.drain_seconds and ends
its streams with a short `retry:`, so clients come back through the proxies with Last-Event-ID.

A proxy stops sending new streams to a host's old instance and sends them to its new, checked one in one
swap (each host runs two instances), so the host never leaves the upstream and the others never take its
share. The drains wait for the last switch because every reload leaves all of a proxy's streams on old
workers, which nginx cuts after nginx.worker_shutdown_timeout: drained per batch, a stream that came back
on a worker an instant before the next batch's reload would be cut again, by nginx, without a short retry.
Drained at the end, each stream is cut once, by its app, while the roll lasts less than
worker_shutdown_timeout - app.drain_seconds - app.stop_timeout (60 - 30 - 15 s by default; README).

A host whose check fails stops the roll: the batches after it are not started, its old instance keeps
serving, and the run fails naming it (pyinfra drops a failed host from every later operation); the batches
switched before it still drain. A proxy that fails its switch keeps every old instance running (neither drained
nor settled).
The proxies' config before the roll names each app host's instance that serves now, so no proxy ever
points only at hosts that are not ready.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from roles.app import SETTLE, Owed, make_live
from roles.nginx import REVISION_CHECK, served_revision_check
from ssedeploy import cluster
from ssedeploy.operations import app_drain, app_settle, nginx_config, rendezvous
from ssedeploy.topology import batches

ROLE = "rolling release"
# Operations the tests look for, by name (each followed by the batch).
STARTED = "Every host of the batch is live on its new instance, or failed"
SWITCH = "Every proxy sends to the batch's new instances (staged, tested, swapped)"
RELOAD = "Reload nginx gracefully"
SWITCHED = "Every proxy has switched"
DRAIN = "Old instance drained (every batch switched)"


def failed() -> set[str]:
    return {h.name for h in host.state.failed_hosts}


@deploy(ROLE)
def roll(settings, owed: Owed | None) -> None:
    _batch(settings, owed, 0)


def _batch(settings, owed: Owed | None, k: int) -> None:
    """Batch k, then the next by recursion, not a loop: pyinfra tells a loop's operations apart by their
    call stack's line numbers, so in a loop every batch's start would come before any batch's switch. Every
    host reaches each rendezvous, so a proxy's switch waits for the batch's start and the drain for every
    proxy's switch (ssedeploy/operations/rendezvous.py)."""
    topo = cluster.current()
    plan = batches(topo.apps, cluster.settings_of(topo.apps[0]).app.rolling_batch)
    if k >= len(plan):
        if host.name in topo.apps:
            # A proxy that failed its switch still sends to the old instances: they keep running.
            switched = lambda: not failed() & set(topo.proxies)  # noqa: E731
            if owed is not None:
                app_drain(name=DRAIN, settings=settings, _if=switched)
            app_settle(name=SETTLE, settings=settings, _if=switched)
        return
    batch = plan[k]
    label = f"batch {k + 1}/{len(plan)}: {', '.join(batch)}"
    starting = host.name in batch and owed is not None
    if starting:
        make_live(settings, owed, hold=True, _if=lambda: not failed())
    rendezvous(name=f"{STARTED} ({label})", settings=settings, learn=starting)
    if topo.is_proxy(host.name):
        tree = nginx_config(name=f"{SWITCH} ({label})", settings=settings)
        systemd.service(name=f"{RELOAD} ({label})", service="nginx", reloaded=True, _if=tree.did_change)
        server.shell(name=f"{REVISION_CHECK} ({label})", commands=[served_revision_check(settings)],
                     _if=tree.did_change)
    rendezvous(name=f"{SWITCHED} ({label})", settings=settings)
    _batch(settings, owed, k + 1)
