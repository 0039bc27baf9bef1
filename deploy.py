"""The deploy pyinfra runs: `pyinfra inventories/prod.py deploy.py`.

Every host's settings are validated the first time this file runs, before any
operation is queued: one bad value anywhere stops the whole run with a message naming
the host, field and value, and no host is touched. (`ssedeploy check` does the same
offline, without connecting.) Then the host's deploy lock is taken: one run at a time
per host (ssedeploy/deploy_lock.py).

The app's Node is resolved and judged against its declared engines, and a Next.js build's SSE routes
against what streams (roles/app.py, ssedeploy/nextbuild.py), while planning, before any host changes;
the Node is installed first (roles/node.py): a download that fails its checksum stops the run before anything
else runs. The host firewall goes next, before anything that listens (roles/firewall.py: a ruleset that would
cut SSH undoes itself).
nginx goes next, its upstream at the instance it serves now; the app's release then
starts on the idle instance and switches nginx to it once checked (roles/app.py).

In a cluster (inventory groups `proxies` and `apps`, ssedeploy/topology.py) proxies get nginx only, app hosts
Node and the app only, and the release rolls over the app hosts a batch at a time, every proxy switched
between (roles/cluster.py).
"""

from pyinfra import host

from roles import app as app_role, firewall as firewall_role, nginx as nginx_role
from roles.app import DRIFT, app, build_preflight
from roles.cluster import roll
from roles.firewall import firewall
from roles.nginx import nginx
from roles.node import node, preflight, runtime
from ssedeploy import cluster
from ssedeploy.deploy_lock import hold
from ssedeploy.operations import LIMIT_FACTS
from ssedeploy.round_trips import light_operation_order, plan_ahead, read_ahead, tune
from ssedeploy.run_results import record_run
from ssedeploy.sudo_check import check as check_sudo

light_operation_order()  # pyinfra's operation order without reading every frame's source, per operation
topology = cluster.load(offline=DRIFT)  # every host's settings and the layout, checked before any host is touched
settings = cluster.settings_of(host.name)
record_run(host.state)
tune(host)  # TCP_NODELAY, and a fact read again while nothing changed on the host is not sent again
check_sudo(host)  # before the first fact: a sudo that cannot be driven is named with what to do
runs_app, runs_nginx = topology.is_app(host.name), topology.is_proxy(host.name)
if runs_app:
    node_runtime = runtime(settings)
    preflight(settings, node_runtime, drift=DRIFT)
    build_preflight(settings)
hold(host, shared=DRIFT)
# What the roles read while planning, in one command (after the lock: no other run changes it meanwhile).
read_ahead(host, [*LIMIT_FACTS, *firewall_role.reads(settings), *(nginx_role.reads(settings) if runs_nginx else []),
                  *(app_role.reads(settings) if runs_app else [])])

if runs_app:
    node(settings, node_runtime)
firewall(settings)
if runs_nginx:
    nginx(settings)
owed = app(settings, node_runtime, roll=topology.clustered) if runs_app else None
if topology.clustered:
    roll(settings, owed)
plan_ahead(host)  # with -y: the facts the operations above will read, read now in a few batched commands
