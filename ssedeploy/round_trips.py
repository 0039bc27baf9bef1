"""Fewer and faster SSH round trips per host: what a no-op run costs is mostly round trips (issue 19).

pyinfra 3.10 runs every fact as its own command on the host (`sudo -H -n sh -c ...` on a new SSH channel),
and caches none: the same fact with the same arguments is read again by every operation that asks for it
(`DebPackages` by each `apt.packages`, the apt stamp and `Date` by each `apt.update`, `/etc/systemd/system` by
each unit file, the app's instances by the nginx tree, the release and the settling...), each its own
round trip, one after the other. What is here:

- `nodelay`: TCP_NODELAY on the host's SSH socket. paramiko sends a command's exec request and its stdin EOF
  as small packets one after the other; with Nagle's algorithm the second waits for the host's delayed ACK
  (~40 ms), on every command. Nothing depends on that wait.
- `memoize_facts`: a fact read again with the same arguments, and the same connection arguments (sudo...),
  is answered from the previous read as long as nothing has run on the host since (any command or file
  transfer on the host forgets every fact of that host, before it runs; so does a failed operation), in the
  same pyinfra stage, or across them with `-y` (without it pyinfra may wait at its prompt between planning
  and running: what was read while planning is read again). So a run reads the host as it did without the
  memo, minus the re-reads of a state nothing changed in between. `RUN_INVARIANT` facts (CPU count,
  architecture, PID 1's open-files hard limit) cannot be changed by a deploy and are kept for the run.
  A Python callback (`python.call`) that changes the host other than through the host's commands must call
  `forget()`: ssedeploy's only one, the firewall's confirmation, touches a file over a connection of its
  own that no fact reads.
- `prefetch`: many facts in one command, each exactly as pyinfra would have run and processed it alone
  (same command, same sudo, same fact object), put in the memo; one that fails is left to pyinfra.
  `read_ahead` does it for the facts the roles read while planning (each role's `reads`), `plan_ahead`
  for the facts the queued operations will read when they run: with `-y` (no prompt in between), each
  operation's planning runs until its first fact the memo lacks, those are read in one batch, and again.
  A no-op run reads its whole host state in a handful of commands; a run that changes something reads
  again, one by one, every fact asked for after its first change.
- `light_operation_order`: pyinfra orders operations by the line numbers on the call stack and takes them
  from `inspect.stack()`, which also reads every frame's source (scanning every loaded module for each
  frame): ~3.6 ms of controller CPU per operation and host, on one CPU for the whole fleet. The same
  function without the source context gives the same numbers.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import secrets
import socket
import sys
from contextvars import ContextVar
from inspect import getcallargs

import pyinfra
from pyinfra import logger
from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.facts import _MISSING_COMMAND_MARKER, ShortFactBase, _handle_fact_kwargs, _make_command
from pyinfra.api.state import BaseStateCallback
from pyinfra.api.util import PYINFRA_INSTALL_DIR

# Set while the memo itself reads a fact: the commands that read it change nothing.
_reading: ContextVar[bool] = ContextVar("ssedeploy_reading_fact", default=False)
# Set while `plan_ahead` runs the operations' planning: (the host's memo, the facts they would read by key).
_wanted: ContextVar[tuple | None] = ContextVar("ssedeploy_wanted_facts", default=None)
# In one batch at most this many facts (a command line of a few hundred KiB at worst).
BATCH = 200
# A fact's output in a batch: between a start line and an end line with its exit status (a random token).
_START, _END = "@@ssedeploy-fact-start", "@@ssedeploy-fact-end"


# sha256 of pyinfra 3.10's get_operation_order_from_stack source, the one `_operation_order` is written from.
PYINFRA_ORDER_SHA = "f4807f61585570e091fd453c7552d9e2b49329555f07f395a8e8f1d2a398a0b2"


class _Wanted(Exception):
    """Raised into an operation's planning at its first fact the memo does not hold."""


def planning_ahead() -> bool:
    """True while `plan_ahead` runs an operation's planning: it must report nothing (it runs again)."""
    return _wanted.get() is not None
# Whose fact name (class __name__ in pyinfra's or ssedeploy's facts) stays valid for the whole run.
RUN_INVARIANT = {"pyinfra.facts.hardware.Cpus", "pyinfra.facts.server.Arch", "ssedeploy.facts.NofileHardLimit"}


def nodelay(host) -> None:
    """TCP_NODELAY on HOST's SSH connection (pyinfra's SSH connector; others are left alone)."""
    client = getattr(getattr(host, "connector", None), "client", None)
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if hasattr(sock, "setsockopt"):  # not a ProxyJump channel: that hop's own socket is not ours to tune
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:  # not TCP (a unix socket proxy): nothing to tune
            logger.debug(f"[{host.name}] TCP_NODELAY not set: {e}")


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _arguments(host, cls, args, kwargs) -> tuple[dict, dict]:
    """(the fact's arguments as its command takes them, the connection arguments pyinfra runs it with), as
    pyinfra's _handle_fact_kwargs finds them but cheaply: that one evaluates every global argument's type
    hints on each call (~1 ms), and a memo hit must cost far less than a round trip, per host."""
    own = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    fact_kwargs = getcallargs(cls().command, *args, **own) if args or own else {}
    fact_kwargs.pop("self", None)
    op = host.current_op_global_arguments
    if op and not any(k.startswith("_") for k in kwargs):
        # The operation's global arguments: every one, its @deploy's and the host's data's defaults included.
        return fact_kwargs, {k: op[k] for k in CONNECTOR_ARGUMENT_KEYS if k in op}
    # Outside any operation: the host's data and the current @deploy's arguments decide, the same all run.
    outside = getattr(host, "current_deploy_kwargs", None) or {}
    context = repr(sorted((k, v) for k, v in outside.items() if k in CONNECTOR_ARGUMENT_KEYS))
    known = host.__dict__.setdefault("ssedeploy_connector", {})
    if any(k.startswith("_") for k in kwargs) or context not in known:
        # The call's own global arguments (rare), or the first read here: pyinfra's own way.
        _, found = _handle_fact_kwargs(host.state, host, cls, args, kwargs)
        connector = {k: v for k, v in found.items() if k in CONNECTOR_ARGUMENT_KEYS}
        if not any(k.startswith("_") for k in kwargs):
            known[context] = connector
        return fact_kwargs, connector
    return fact_kwargs, known[context]


def _key(host, cls, args, kwargs):
    """The fact, its arguments as its command takes them, and the connection arguments pyinfra would run it
    with (the current operation's, the host's data's, the call's own): what pyinfra's read depends on."""
    fact_kwargs, connector = _arguments(host, cls, args, kwargs)
    return (_qualname(cls), repr(sorted(fact_kwargs.items())), repr(sorted(connector.items())))


class FactMemo:
    """The facts of one host read since anything last ran there (see the module's doc)."""

    def __init__(self, host) -> None:
        self.host = host
        self.facts: dict[tuple, tuple[object, object]] = {}  # key -> (stage it was read in, value)
        self.reads = self.hits = 0
        self._get_fact = host.get_fact

    def get_fact(self, cls, *args, **kwargs):
        if isinstance(cls, type) and issubclass(cls, ShortFactBase):  # a view of another fact: read that one
            return self._get_fact(cls, *args, **kwargs)
        key, stage = _key(self.host, cls, args, kwargs), self.host.state.current_stage
        if key in self.facts:
            read_in, value = self.facts[key]
            if read_in == stage or key[0] in RUN_INVARIANT or not self.host.state.check_for_changes:
                self.hits += 1
                return copy.deepcopy(value)  # pyinfra's operations may change what they are given
        wanted = _wanted.get()
        if wanted is not None and wanted[0] is self:  # planning ahead (`plan_ahead`): name it, read nothing
            wanted[1].setdefault(key, (cls, args, kwargs))
            raise _Wanted()
        self.reads += 1
        token = _reading.set(True)
        try:
            value = self._get_fact(cls, *args, **kwargs)
        finally:
            _reading.reset(token)
        if self.host not in self.host.state.failed_hosts:
            self.facts[key] = (stage, copy.deepcopy(value))
        return value

    def forget(self) -> None:
        """Everything read so far: something is about to change on the host (no-op while reading a fact)."""
        if not _reading.get():
            self.facts.clear()


class _ForgetOnChange(BaseStateCallback):
    """An operation that failed: its host's facts are forgotten (it may have changed part of what it does)."""

    @staticmethod
    def operation_host_error(state, host, op_hash, retry_count: int = 0, max_retries: int = 0):
        memo = getattr(host, "ssedeploy_facts", None)
        if memo:
            memo.forget()


def memoize_facts(host) -> FactMemo:
    """Install the memo on HOST (a pyinfra Host, not the context proxy) once; returns it."""
    memo = getattr(host, "ssedeploy_facts", None)
    if memo is not None:
        return memo
    memo = FactMemo(host)
    host.get_fact = memo.get_fact
    for name in ("run_shell_command", "put_file", "get_file", "rsync"):
        original = getattr(host, name)

        def forgetting(*args, _original=original, **kwargs):
            memo.forget()  # before: what it changes is not read back from before it ran
            return _original(*args, **kwargs)

        setattr(host, name, forgetting)
    host.ssedeploy_facts = memo
    if not any(isinstance(h, _ForgetOnChange) for h in host.state.callback_handlers):
        host.state.add_callback_handler(_ForgetOnChange())
    return memo


def tune(host) -> FactMemo:
    """Both, for HOST (pyinfra's `host` context proxy or a Host): call before its first fact."""
    target = _host(host)
    nodelay(target)
    return memoize_facts(target)


def _fact_command(host, cls, args, kwargs):
    """(the fact, its command, its connection arguments) as pyinfra's _get_fact would run it, or None where the
    batch cannot stand in for it (a fact with a precondition or its own shell). The same fact object must
    process the output: some keep what their command was given (pyinfra's hash facts keep the path)."""
    fact = cls()
    if fact.shell_executable or fact.check_preconditions(host.state, host):
        return None
    fact_kwargs, connector = _arguments(host, cls, args, kwargs)
    command = _make_command(fact.command, dict(fact_kwargs))
    requires = _make_command(fact.requires_command, dict(fact_kwargs))
    text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    if requires:  # as pyinfra wraps it: the marker says the command is missing
        needed = requires.get_raw_value() if isinstance(requires, StringCommand) else str(requires)
        text = (f"if command -v {needed} >/dev/null 2>&1; then ( {text} ); "
                f"else echo '{_MISSING_COMMAND_MARKER}'; fi")
    return fact, text, connector


def _split(lines: list[str], token: str) -> dict[int, tuple[int, list[str]]]:
    """A batch's output: {index: (exit status, the fact's stdout lines as pyinfra would have them)}."""
    found, current, out = {}, None, []
    for line in lines:
        if line.startswith(f"{_START}-{token} "):
            current, out = int(line.split(" ", 1)[1]), []
        elif current is not None and f"{_END}-{token} " in line:
            head, _, tail = line.partition(f"{_END}-{token} ")
            index, status = (int(x) for x in tail.split())
            if head:  # the fact's last line had no newline: the end line's own newline ends it
                out.append(head)
            elif out and out[-1] == "":  # the newline put before the end line, after the fact's own
                out.pop()
            if index == current:
                found[index] = (status, out)
            current = None
        elif current is not None:
            out.append(line)
    return found


def prefetch(host, wanted) -> int:
    """Read the facts `wanted` ((fact class, args, kwargs) each) on HOST in as few commands as their
    connection arguments allow, and put each that read cleanly in the memo, as if read one by one (same
    commands, same sudo, same processing). One that failed, or that the batch cannot stand in for, is left
    to pyinfra. Returns how many went in."""
    memo = host.ssedeploy_facts
    stage = host.state.current_stage
    groups: dict[str, list] = {}
    for cls, args, kwargs in wanted:
        try:
            made = _fact_command(host, cls, args, kwargs)
        except Exception:  # pyinfra will say what is wrong with it when it reads it
            continue
        if made:
            fact, text, connector = made
            key = _key(host, cls, args, kwargs)
            groups.setdefault(repr(sorted(connector.items())), []).append((key, fact, text, connector))
    seeded = 0
    for facts in groups.values():
        for start in range(0, len(facts), BATCH):
            chunk = facts[start:start + BATCH]
            token = secrets.token_hex(8)
            script = "".join(f"echo '{_START}-{token} {i}'\n(\n{text}\n)\n"
                             f"printf '\\n{_END}-{token} {i} %s\\n' $?\n" for i, (_, _, text, _) in enumerate(chunk))
            token_set = _reading.set(True)
            try:
                status, output = host.run_shell_command(StringCommand(script), **chunk[0][3])
            except Exception as e:  # the facts are read one by one later, as without the batch
                logger.debug(f"[{host.name}] fact batch failed: {e}")
                continue
            finally:
                _reading.reset(token_set)
            if not status:
                continue
            for index, (code, lines) in _split(output.stdout_lines, token).items():
                key, fact, _, _ = chunk[index]
                if code != 0 or lines == [_MISSING_COMMAND_MARKER]:
                    continue
                try:
                    value = fact.process(lines) if lines else fact.default()
                except Exception:
                    continue
                memo.facts[key] = (stage, value)  # given to no one yet: no copy
                seeded += 1
    return seeded


def _host(host):
    """The Host behind pyinfra's `host` context proxy (or HOST itself)."""
    return host._get_module() if callable(getattr(host, "_get_module", None)) else host


def read_ahead(host, wanted) -> int:
    """`prefetch` for HOST (pyinfra's `host` proxy or a Host): facts the deploy itself reads while pyinfra
    plans ((fact class, args, kwargs) each), in one command; 0 without the memo."""
    target = _host(host)
    return prefetch(target, wanted) if getattr(target, "ssedeploy_facts", None) else 0


def plan_ahead(host, depth: int = 4) -> int:
    """Before the run executes, read in a few batches the facts HOST's queued operations will read: each
    operation's planning runs until its first fact not in the memo (named, not read), those are read in one
    batch, and again, `depth` times at most. Only with `-y`: without it pyinfra plans every operation
    itself, and may wait at its prompt before executing. Nothing changes on the host; the memo forgets all of
    it at the first change, so the run reads what it would have read. Returns how many facts went in."""
    target = _host(host)
    memo = getattr(target, "ssedeploy_facts", None)
    state = target.state
    if memo is None or state.check_for_changes or state.is_executing:
        return 0
    pending = list(state.ops.get(target, {}).values())
    seeded = 0
    target.noop = lambda description: None  # said when the operation runs (`-v` prints it)
    try:
        seeded = _plan_ahead(target, memo, pending, depth)
    finally:
        del target.noop
    return seeded


def _plan_ahead(target, memo, pending, depth: int) -> int:
    seeded = 0
    for _ in range(depth):
        wanted: dict = {}
        again = []
        for op in pending:
            token = _wanted.set((memo, wanted))
            generator = op.command_generator()
            try:
                next(generator, None)  # a command: the operation changes something; later facts depend on it
            except _Wanted:
                again.append(op)
            except Exception:  # pyinfra runs it again when it executes, and says what is wrong then
                pass
            finally:
                generator.close()
                _wanted.reset(token)
        if not wanted:
            break
        seeded += prefetch(target, list(wanted.values()))
        pending = again
    return seeded


def _operation_order(state):
    """pyinfra.api.util.get_operation_order_from_stack as pyinfra 3.10 has it, line for line, but with the
    frames' source context left out (`stack(0)`, `getframeinfo(frame, 0)`): pyinfra reads it, for every
    operation of every host, and never uses it (~3.6 ms an operation: `inspect.getmodule` scanning every
    loaded module for each frame). Same filenames, same line numbers, so the same operation order."""
    stack_items = list(reversed(inspect.stack(0)[1:]))  # [1:]: not this function's own frame (not pyinfra's)
    i = 0
    if state.current_deploy_filename:
        i = len(stack_items)  # not on the stack: pyinfra's loop ends on its own frame, which it leaves out
        for n, stack_item in enumerate(stack_items):
            if inspect.getframeinfo(stack_item[0], 0).filename == state.current_deploy_filename:
                i = n
                break
    line_numbers = []
    if pyinfra.is_cli:
        line_numbers.append(state.current_op_file_number)
    for stack_item in stack_items[i:]:
        frame = inspect.getframeinfo(stack_item[0], 0)
        if frame.filename.startswith(PYINFRA_INSTALL_DIR):
            continue
        line_numbers.append(frame.lineno)
    del stack_items
    return line_numbers


def light_operation_order() -> bool:
    """Have pyinfra order operations with `_operation_order`; only over the function it was written from (a
    pyinfra whose function differs keeps its own). True when in place."""
    from pyinfra.api import util
    operation = sys.modules["pyinfra.api.operation"]
    if operation.get_operation_order_from_stack is _operation_order:
        return True
    if operation.get_operation_order_from_stack is not util.get_operation_order_from_stack or \
            hashlib.sha256(inspect.getsource(util.get_operation_order_from_stack).encode()).hexdigest() != PYINFRA_ORDER_SHA:
        return False
    operation.get_operation_order_from_stack = _operation_order
    return True
