"""The Node.js the app runs: the distro's nodejs package, or an official build installed beside the others
and checked against its published SHA-256 (ssedeploy/node.py, scripts/node-install.sh).

Which Node a host gets is decided while pyinfra plans, before any host changes (`runtime`): a line is
resolved on the mirror, the build's checksum read, and the app's declared `engines.node` judged against it,
so a run that would put the app on a Node it does not accept stops with nothing changed. The role runs
first in deploy.py: a download that fails its checksum stops the run before nginx or the app is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Arch
from pyinfra.operations import apt

from roles import APT_LOCK_WAIT
from ssedeploy import engines, node as nodejs
from ssedeploy.facts import DistroNode
from ssedeploy.inventory import node_mirror
from ssedeploy.operations import node_build
from ssedeploy.paths import DISTRO_NODE_HOME, node_root
from ssedeploy.run_results import note
from ssedeploy.settings import SettingsError

ROLE = "node"
INSTALL = "Node.js official build"  # followed by the version (tests look for it)


@dataclass(frozen=True)
class Runtime:
    """The Node a host's app runs: `home` holds bin/node; `build` is None for the distro's."""

    spec: str
    version: str | None  # None: the distro's, where apt knows no version yet
    home: str
    build: nodejs.Build | None = None


def mirror(settings) -> str:
    return node_mirror(settings, host.data)


def runtime(settings) -> Runtime:
    """Resolve the host's Node (facts and two small fetches; nothing changes), or fail naming host and setting."""
    spec = settings.app.node
    if spec == nodejs.DISTRO:
        return Runtime(spec, host.get_fact(DistroNode), DISTRO_NODE_HOME)
    site = mirror(settings)
    try:
        build = nodejs.build_for(spec, site, nodejs.arch(host.get_fact(Arch) or "?"))
    except (ValueError, nodejs.NodeError) as exc:
        raise SettingsError(f"host {host.name}: app.node = {spec!r}: {exc}") from None
    return Runtime(spec, build.version, f"{node_root(settings)}/{build.home}", build)


def where(settings, rt: Runtime) -> str:
    """How the host's Node was chosen, for messages."""
    if rt.build is None:
        return "app.node = 'distro': the distro's nodejs package"
    if nodejs.is_line(rt.spec):
        return f"app.node = {rt.spec!r}: the newest {rt.spec}.x on {mirror(settings)}"
    return f"app.node = {rt.spec!r}"


def preflight(settings, rt: Runtime, drift: bool = False) -> None:
    """Refuse the run when the app's engines.node does not accept the host's Node; note when it says none."""
    app = settings.app
    if drift and not os.path.isdir(app.source):
        return
    try:
        found = engines.declared(app.source)
    except ValueError as exc:
        raise SettingsError(f"host {host.name}: app {app.name}: {exc}") from None
    if found.path is None:
        note(host, f"app {app.name}: no package.json in {app.source}: engines.node not checked")
    elif found.range is None:
        note(host, f"app {app.name}: {found.path} declares no engines.node: not checked")
    elif rt.version is None:
        note(host, f"app {app.name}: apt knows no version of the distro's nodejs yet: engines.node not checked")
    else:
        refusal = engines.refusal(host.name, app.name, found, rt.version, where(settings, rt))
        if refusal:
            raise SettingsError(refusal)


@deploy(ROLE)
def node(settings, rt: Runtime):
    apt.update(name="apt lists are fresh", cache_time=3600)
    if rt.build is None:
        apt.packages(name="Install Node.js (distro)", packages=["nodejs"], extra_install_args=APT_LOCK_WAIT)
        return
    # What the install needs (a stock cloud image has them; a minimal one may not).
    apt.packages(name="Download tools", packages=["curl", "ca-certificates", "xz-utils"],
                 extra_install_args=APT_LOCK_WAIT)
    node_build(name=f"{INSTALL} {rt.build.version} ({rt.build.arch})", build=rt.build, root=node_root(settings))
