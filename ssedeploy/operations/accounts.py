"""A system account for a service, read with one small fact instead of pyinfra's account-wide ones."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from ..facts import SystemUser


@operation()
def system_user(user: str, group: str, shell: str = "/usr/sbin/nologin", home: str = "/nonexistent"):
    """
    A system account with no login and no home directory (as pyinfra's ``server.user`` with ``system=True,
    create_home=False``, the same ``useradd``/``usermod``), without reading every account on the host
    (``server.Users``: a lastlog per account) and without making ``home`` exist: it is a name, not a place.

    + user: the account
    + group: its primary group (must exist)
    + shell, home: what the account has
    """
    found = host.get_fact(SystemUser, user=user)
    if found is None:
        yield StringCommand("useradd", "-d", QuoteString(home), "-s", QuoteString(shell), "-g", QuoteString(group),
                            "-r", "-M", QuoteString(user))
        return
    change = [*(["-d", QuoteString(home)] if found["home"] != home else []),
              *(["-s", QuoteString(shell)] if found["shell"] != shell else []),
              *(["-g", QuoteString(group)] if found["group"] != group else [])]
    if not change:
        host.noop(f"user {user} exists")
        return
    yield StringCommand("usermod", *change, QuoteString(user))
