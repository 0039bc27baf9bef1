"""An operation that changes nothing and that every host of a run calls at the same point, so that pyinfra
orders operations across hosts by it.

pyinfra orders a run's operations by each host's own sequence only (a topological sort of every host's
chain): an app host's drain and a proxy's switch, in different chains, may run in either order. An operation
every host calls from the same line is one node that all chains share: whatever a host does before it runs
before whatever any host does after it (roles/cluster.py).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from .. import cluster
from ..settings import Settings


@operation()
def rendezvous(settings: Settings, learn: bool = False):
    """
    Every host waits here for every other; nothing changes on the host.

    + settings: the host's ssedeploy settings
    + learn: an app host whose batch just went live: the run reads the port it recorded, which the proxies'
      next switch sends to (at run time only: planning must not move the proxies)
    """
    if learn and host.state.is_executing:
        cluster.learn(settings)
    host.noop("every host of the run is here")
    return
    yield  # an operation is a generator (pyinfra), even one that yields nothing
