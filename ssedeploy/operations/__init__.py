"""pyinfra operations ssedeploy adds where pyinfra has none (they compose with _if, --dry, --diff), one
module per thing they manage:

- nginx_tree: the nginx tree staged, swapped, tested, restored (`nginx_config`)
- accounts: a service's system account, one small fact (`system_user`)
- app: an app release uploaded (`app_release`), made live on the idle instance (`app_live`), instances
  converged (`app_settle`)
- files: a file whose content is never shown (`private_file`)
- node: an official Node.js build, checksum-checked (`node_build`)
- rendezvous: a point every host of a run reaches before any goes on (`rendezvous`)
- util: what they share (`report_differences`, `detached`, `host_limits`, `SCRIPTS`)

Everything is re-exported here.
"""

from .accounts import system_user
from .app import app_drain, app_live, app_release, app_settle
from .files import private_file
from .nginx_tree import nginx_config
from .node import node_build
from .rendezvous import rendezvous
from .util import LIMIT_FACTS, SCRIPTS, detached, host_limits, report_differences

__all__ = ["LIMIT_FACTS", "SCRIPTS", "app_drain", "app_live", "app_release", "app_settle", "detached", "host_limits", "nginx_config", "node_build", "private_file", "rendezvous",
           "report_differences", "system_user"]
