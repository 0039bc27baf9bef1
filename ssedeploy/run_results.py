"""What a pyinfra run did, per host and operation, as JSON: what `drift`, the e2e tests and the benchmarks read.

pyinfra's console text is for people (its wording changes between releases); this is for programs.
`RunResults`, a state callback installed by deploy.py, writes $SSEDEPLOY_RESULTS (default
`.ssedeploy/last-run.json` under the current directory) each time a host disconnects, which pyinfra
does after a run, a dry run and a failure alike (pyinfra_cli/cli.py: `disconnect_all` in `finally`):

    {
      "format": 1,
      "executed": true,          # false: a dry run (or one stopped before executing): results are predictions
      "hosts": {
        "web-1": {
          "operations": [        # pyinfra's operation order, only the operations this host has
            {"name": "nginx | nginx config (staged, tested, swapped)", "result": "changed",
             "files": ["/etc/nginx/nginx.conf"]},
            ...                  # a failed one also has "error": the last lines its commands wrote to stderr
          ],
          "notes": ["skipped in drift mode: the release (no built app at ../myapp)"],
          "facts": {"releases": [...]},   # what a deploy file reported with `report` (JSON values)
          "failed_at": null      # or the operation the host failed at, or "could not connect"
        }
      },
      "failed_hosts": {"web-2": "nginx | nginx config (staged, tested, swapped)"}
    }

`result` is one of RESULTS: after a run "changed", "no change" (also a skipped `_if`), "failed" or
"not run" (the host failed earlier or the run stopped); after a dry run "would change", "may change"
(only if an earlier operation changes: an `_if`), "no change", or "not checked" (change detection off).
It is decided from pyinfra's OperationMeta the way pyinfra's own `--json` output does
(pyinfra_cli/prints.py build_results_json, build_plan_json). `files` are what the operation named with
`report_differences` (ssedeploy.operations), found by `host.current_op_hash`: while pyinfra plans, and
replaced by what it names when it executes (`pyinfra -y` does not plan); `notes` what the deploy recorded
with `note` (e.g. what drift mode skipped).

The FAILED line pyinfra lacks is printed here too: `--> HOST FAILED at: OPERATION`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pyinfra import logger
from pyinfra.api.state import BaseStateCallback

FORMAT = 1
DEFAULT_PATH = ".ssedeploy/last-run.json"
RESULTS = ("changed", "no change", "failed", "not run", "would change", "may change", "not checked")
CHANGES = ("changed", "would change")


def results_path() -> Path:
    """Where this run's results go: $SSEDEPLOY_RESULTS, else .ssedeploy/last-run.json under the current directory."""
    return Path(os.environ.get("SSEDEPLOY_RESULTS") or DEFAULT_PATH).absolute()


def op_name(state, op_hash: str) -> str:
    """The operation's name as pyinfra prints it ("nginx | Reload nginx gracefully")."""
    meta = state.op_meta[op_hash]
    name = ", ".join(sorted(meta.names))
    return f"{name} ({', '.join(str(arg) for arg in meta.args)})" if meta.args else name


ERROR_LINES = 40  # of a failed operation's stderr, in its "error"


def op_error(op_data) -> list[str] | None:
    """The last lines a failed operation's commands wrote to stderr (the host-side scripts' own reasons)."""
    meta = op_data.operation_meta
    if not meta.is_complete() or meta.did_succeed(_raise_if_not_complete=False) or meta._combined_output is None:
        return None
    return meta.stderr_lines[-ERROR_LINES:]


def op_result(op_data, executed: bool) -> str:
    meta = op_data.operation_meta
    if meta.is_complete():
        if not meta.did_succeed(_raise_if_not_complete=False):
            return "failed"
        return "changed" if meta.did_change() else "no change"
    if executed:
        return "not run"
    if meta._maybe_is_change is None:
        return "not checked"
    if not meta._maybe_is_change:
        return "no change"
    return "may change" if op_data.global_arguments.get("_if") else "would change"


class RunResults(BaseStateCallback):
    """Records files and notes per host and operation while the run goes; writes the JSON at each disconnect."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).absolute() if path else results_path()
        self.failed: dict[str, str] = {}
        self.files: dict[tuple[str, str], list[str]] = {}
        self.notes: dict[str, list[str]] = {}
        self.facts: dict[str, dict] = {}

    # recorded by the deploy (operations and roles), through name_files and note below

    def name_files(self, host, paths: list[str]) -> None:
        if host.current_op_hash is None:
            self.note(host, f"differs: {', '.join(paths)}")
        else:
            self.files[(host.name, host.current_op_hash)] = list(paths)

    def note(self, host, text: str) -> None:
        notes = self.notes.setdefault(host.name, [])
        if text not in notes:  # deploy files run once per host, but a note may be made again
            notes.append(text)

    def report(self, host, key: str, value) -> None:
        self.facts.setdefault(host.name, {})[key] = value

    # pyinfra's callbacks

    def operation_host_start(self, state, host, op_hash) -> None:
        # Executing: the files the operation names now replace what it named while pyinfra planned.
        self.files.pop((host.name, op_hash), None)

    def operation_host_error(self, state, host, op_hash, retry_count: int = 0, max_retries: int = 0) -> None:
        if retry_count >= max_retries:
            self.failed.setdefault(host.name, op_name(state, op_hash))

    def host_disconnect(self, state, host) -> None:
        if host.name in self.failed:
            logger.error(f"--> {host.name} FAILED at: {self.failed[host.name]} "
                         "(nothing after it ran there; its error is above)")
        try:
            self.write(state)
        except OSError as e:  # readers (drift, the tests) find no file and say so; the run's own outcome stands
            logger.error(f"--> could not write the run's results to {self.path}: {e}")

    # the file

    def collect(self, state) -> dict:
        executed = bool(state.is_executing)
        order = state.get_op_order()
        failed = dict(self.failed)
        hosts = {}
        for host in state.inventory:
            if host not in state.activated_hosts:
                if host not in state.failed_hosts:
                    continue  # not part of this run (--limit)
                failed.setdefault(host.name, "could not connect")
            ops = state.ops.get(host, {})
            hosts[host.name] = {
                "operations": [
                    {"name": op_name(state, op_hash), "result": op_result(ops[op_hash], executed),
                     "files": self.files.get((host.name, op_hash), []),
                     **({"error": error} if (error := op_error(ops[op_hash])) is not None else {})}
                    for op_hash in order if op_hash in ops
                ],
                "notes": self.notes.get(host.name, []),
                "facts": self.facts.get(host.name, {}),
                "failed_at": failed.get(host.name),
            }
        return {"format": FORMAT, "executed": executed, "hosts": hosts, "failed_hosts": failed}

    def write(self, state) -> None:
        """Atomically: a reader sees the previous whole file or this one, never a part."""
        data = json.dumps(self.collect(state), indent=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise


def record_run(state) -> RunResults:
    """Install RunResults once per run (deploy files run once per host); returns the one installed."""
    for handler in state.callback_handlers:
        if isinstance(handler, RunResults):
            return handler
    handler = RunResults()
    state.add_callback_handler(handler)
    return handler


def _installed(host) -> RunResults | None:
    state = getattr(host, "state", None)
    return next((h for h in getattr(state, "callback_handlers", ()) if isinstance(h, RunResults)), None)


def name_files(host, paths: list[str]) -> None:
    """The files the current operation of `host` would change (or changes): in the results, and logged
    once while pyinfra plans (`[web-1] differs: ...`)."""
    if not paths:
        return
    if not host.state.is_executing:
        logger.info(f"    [{host.name}] differs: {', '.join(paths)}")
    results = _installed(host)
    if results:
        results.name_files(host, paths)


def note(host, text: str) -> None:
    """Say something about the run of `host` (e.g. what drift mode skipped): logged, and in the results' notes."""
    logger.info(f"    [{host.name}] {text}")
    results = _installed(host)
    if results:
        results.note(host, text)


def report(host, key: str, value) -> None:
    """Put what a deploy file read from `host` into the results, under its `facts` (`ssedeploy releases`)."""
    results = _installed(host)
    if results:
        results.report(host, key, value)


# -- reading ---------------------------------------------------------------------------------

class ResultsError(Exception):
    """No results file, or not one this version reads."""


def load(path: str | os.PathLike) -> dict:
    """The results a run wrote, checked for the shape above."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: the run wrote no results") from None
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: unreadable results: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("hosts"), dict):
        raise ResultsError(f"{path}: not ssedeploy run results of format {FORMAT}")
    return data


def changes(data: dict) -> list[tuple[str, dict]]:
    """(host, operation) for every operation that changed or would change something, in order."""
    return [(name, op) for name, host in data["hosts"].items() for op in host["operations"]
            if op["result"] in CHANGES]
