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
"""

from pyinfra import host, inventory

from roles.app import DRIFT, app, build_preflight
from roles.firewall import firewall
from roles.nginx import nginx
from roles.node import node, preflight, runtime
from ssedeploy.deploy_lock import hold
from ssedeploy.run_results import record_run
from ssedeploy.settings import for_host
from ssedeploy.sudo_check import check as check_sudo

for other in inventory:
    for_host(other, offline=DRIFT)
settings = for_host(host, offline=DRIFT)
record_run(host.state)
check_sudo(host)  # before the first fact: a sudo that cannot be driven is named with what to do
node_runtime = runtime(settings)
preflight(settings, node_runtime, drift=DRIFT)
build_preflight(settings)
hold(host, shared=DRIFT)

node(settings, node_runtime)
firewall(settings)
nginx(settings)
app(settings, node_runtime)
