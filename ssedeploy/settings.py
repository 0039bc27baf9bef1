"""The typed settings every deploy reads from inventory data.

ssedeploy's settings live under their own data keys (`site`, `app`), so pyinfra's
connection data (`ssh_*`, `_sudo`, ...) is left alone while a typo inside ours is an
error. Values that end up inside nginx config are checked against what nginx can
parse, so nothing a template receives can break out of its directive.
"""

from __future__ import annotations

import re
from typing import Annotated

from pyinfra.api.exceptions import PyinfraError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

DATA_KEYS = ("site", "app")

_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/%:@!*+,=-]*$")
_SERVER_NAME_RE = re.compile(r"^(_|\*?\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\*|localhost)$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def _path(value: str) -> str:
    if not _PATH_RE.match(value):
        raise ValueError(
            "must be an absolute URL path of letters, digits and . _ ~ / % : @ ! * + , = - "
            "(no spaces, quotes, ;, {, }, $ or newlines)"
        )
    return value


def _server_name(value: str) -> str:
    if not _SERVER_NAME_RE.match(value) or len(value) > 253:
        raise ValueError("must be a host name (a.example.com), a wildcard (*.example.com) or _")
    return value


def _unit_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError("must be 1-32 characters: lower-case letters, digits or '-', a letter first")
    return value


Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Model):
    server_names: list[Annotated[str, AfterValidator(_server_name)]] = ["_"]
    listen_port: Port = 80
    sse_paths: list[Annotated[str, AfterValidator(_path)]] = Field(default=["/api/stream"], min_length=1)
    # Loopback-only listener that serves the live config revision (proves a reload took effect).
    revision_port: Port = 8573


class App(_Model):
    name: Annotated[str, AfterValidator(_unit_name)] = "sseapp"
    port: Port = 3000
    heartbeat_seconds: int = Field(default=15, ge=1, le=300)


class Settings(_Model):
    site: Site = Site()
    app: App = App()

    @property
    def proxy_read_timeout(self) -> int:
        """nginx closes a stream silent for this long: 4 heartbeats (playbook row 5)."""
        return 4 * self.app.heartbeat_seconds


class SettingsError(PyinfraError, ValueError):
    """Bad settings; a PyinfraError so pyinfra's CLI prints the message, not a traceback."""


def parse(data: dict, host_name: str = "?") -> Settings:
    """Build Settings from one host's data; errors name host, field, value and what is allowed."""
    raw = {key: data[key] for key in DATA_KEYS if data.get(key) is not None}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            value = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (a typo?)"
            lines.append(f"host {host_name}: {where} = {value!r}: {msg}")
        raise SettingsError("\n".join(lines)) from None


def for_host(host) -> Settings:
    """Settings of a pyinfra host (group and host data merged by pyinfra)."""
    return parse({key: host.data.get(key) for key in DATA_KEYS}, host.name)
