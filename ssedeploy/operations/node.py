"""An official Node.js build on a host, checked against its published SHA-256 before it is unpacked."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import File

from ..node import Build
from ..paths import STATE
from .util import SCRIPTS, report_differences


@operation()
def node_build(build: Build, root: str):
    """
    Install an official Node.js build to ROOT/vX.Y.Z-linux-ARCH (scripts/node-install.sh), beside the
    others; nothing is done when it is there.

    + build: the build (ssedeploy.node.build_for): its URL and the SHA-256 from its SHASUMS256.txt
    + root: the directory the app's Node builds live in (ssedeploy.paths.node_root)

    **Example:**

    .. code:: python

        node_build(name="Node.js", build=build_for("24", OFFICIAL_MIRROR, "x64"), root="/srv/sseapp/node")
    """
    # pyinfra's File fact (a stat), not PathStates: that one hashes a file, and node is over 100 MB.
    if host.get_fact(File, path=f"{root}/{build.home}/bin/node"):
        host.noop(f"Node.js {build.version} is installed at {root}/{build.home}")
        return
    report_differences([f"{root}/{build.home} (Node.js {build.version}, from {build.url})"])
    yield f"mkdir -p {STATE}"
    yield FileUploadCommand(str(SCRIPTS / "node-install.sh"), f"{STATE}/node-install.sh")
    yield shlex.join(["/bin/sh", f"{STATE}/node-install.sh", root, build.home, build.url, build.sha256,
                      build.version])
