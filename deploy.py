"""The deploy pyinfra runs: `pyinfra inventories/prod.py deploy.py`.

Every host's settings are validated the first time this file runs, before any
operation is queued: one bad value anywhere stops the whole run with a message naming
the host, field and value, and no host is touched. (`ssedeploy check` does the same
offline, without connecting.) Then the host's deploy lock is taken: one run at a time
per host (ssedeploy/deploy_lock.py).

nginx goes first, its upstream at the instance it serves now; the app's release then
starts on the idle instance and switches nginx to it once checked (roles/app.py).
"""

from pyinfra import host, inventory

from roles.app import DRIFT, app
from roles.nginx import nginx
from ssedeploy.deploy_lock import hold
from ssedeploy.run_results import record_run
from ssedeploy.settings import for_host

for other in inventory:
    for_host(other, offline=DRIFT)
settings = for_host(host, offline=DRIFT)
record_run(host.state)
hold(host, shared=DRIFT)

nginx(settings)
app(settings)
