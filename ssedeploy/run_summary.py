"""Name the hosts a run failed on: pyinfra's results table only counts them."""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.state import BaseStateCallback


class FailedHosts(BaseStateCallback):
    """Remembers each host's first failed operation and names it when the run disconnects."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def operation_host_error(self, state, host, op_hash, retry_count: int = 0, max_retries: int = 0) -> None:
        if retry_count >= max_retries:
            self.failed.setdefault(host.name, ", ".join(sorted(state.op_meta[op_hash].names)))

    def host_disconnect(self, state, host) -> None:
        if host.name in self.failed:
            logger.error(f"--> {host.name} FAILED at: {self.failed[host.name]} "
                         "(nothing after it ran there; its error is above)")


def report_failed_hosts(state) -> None:
    """Install FailedHosts once per run (deploy files run once per host)."""
    if not any(isinstance(h, FailedHosts) for h in state.callback_handlers):
        state.add_callback_handler(FailedHosts())
