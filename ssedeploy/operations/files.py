"""Files pyinfra's own `files` operations would show: a secret's content never appears in output or diffs."""

from __future__ import annotations

import hashlib
from io import StringIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import File

from ..facts import PathStates
from .util import report_differences


@operation()
def private_file(content: str, dest: str, user: str = "root", group: str = "root", mode: str = "600"):
    """
    A file whose content is never shown (no ``--diff``, no output): for secrets.

    + content: the file's text
    + dest: path on the host
    + user/group/mode: ownership and mode
    """
    want = ("F", hashlib.sha256(content.encode()).hexdigest())
    current = host.get_fact(PathStates, paths=[dest]).get(dest)
    meta = host.get_fact(File, path=dest) if current == want else None
    # File gives the mode as the octal digits read as a decimal int: "0640" -> 640.
    if meta and (meta["user"], meta["group"], meta["mode"]) == (user, group, int(mode)):
        host.noop(f"{dest} is current")
        return
    report_differences([f"{dest} (content not shown)"])
    yield FileUploadCommand(StringIO(content), dest)
    yield f"chown {user}:{group} {dest} && chmod {mode} {dest}"
