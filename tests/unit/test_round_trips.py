"""ssedeploy/round_trips.py: a fact is read again only when something ran on the host since (or the stage
changed while pyinfra may have waited), the batch reads facts exactly as pyinfra reads them one by one, and
planning ahead names each operation's facts without reading or reporting anything. No host: a fake one runs
the commands with /bin/sh here, as pyinfra would through SSH."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest
from pyinfra.api import FactBase, StringCommand
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.api.state import StateStage
from pyinfra.facts.files import Directory, File, Sha1File

from ssedeploy import round_trips
from ssedeploy.facts import PathStates, SystemUser


class Counted(FactBase):
    """A fact whose command prints how many times it ran (a file under tmp counts)."""

    def command(self, counter: str) -> str:
        return f"echo x >> {counter}; wc -l < {counter}"

    def process(self, output):
        return {"runs": int(output[0])}


class FakeHost:
    """What FactMemo uses of pyinfra's Host: get_fact (runs the fact's command with /bin/sh), the command
    and file methods, state (stage, -y, failed hosts, callbacks) and the current operation's arguments."""

    def __init__(self, yes: bool = True):
        self.name = "fake"
        self.state = SimpleNamespace(current_stage=StateStage.Prepare, check_for_changes=not yes, failed_hosts=set(),
                                     callback_handlers=[], add_callback_handler=lambda h: None, ops={},
                                     is_executing=False)
        self.current_op_global_arguments = None
        self.data = {}
        self.commands: list[str] = []
        self.reads = 0

    def get_fact(self, cls, *args, **kwargs):
        self.reads += 1
        fact = cls()
        output = self._sh(fact.command(*args, **kwargs))
        return fact.process(output) if output else fact.default()

    def _sh(self, command) -> list[str]:
        text = command.get_raw_value() if isinstance(command, StringCommand) else command
        return subprocess.run(["/bin/sh", "-c", text], capture_output=True, text=True).stdout.splitlines()

    def run_shell_command(self, command, **kwargs):
        text = command.get_raw_value() if isinstance(command, StringCommand) else command
        self.commands.append(text)
        done = subprocess.run(["/bin/sh", "-c", text], capture_output=True, text=True)
        return done.returncode == 0, CommandOutput([OutputLine("stdout", line) for line in done.stdout.splitlines()])

    def put_file(self, *args, **kwargs):
        self.commands.append("put")
        return True

    def get_file(self, *args, **kwargs):
        return True

    def rsync(self, *args, **kwargs):
        return True


@pytest.fixture
def host(monkeypatch):
    # Arguments as pyinfra would take them, without a pyinfra state: the fact's keyword arguments, sudo on.
    def handle(state, host, cls, args, kwargs):
        return dict(kwargs or {}), {"_sudo": True, "_sudo_user": None}
    monkeypatch.setattr(round_trips, "_handle_fact_kwargs", handle)
    h = FakeHost()
    round_trips.memoize_facts(h)
    return h


def test_a_fact_is_read_once_while_nothing_runs_on_the_host(host, tmp_path):
    counter = str(tmp_path / "n")
    assert host.get_fact(Counted, counter=counter) == {"runs": 1}
    assert host.get_fact(Counted, counter=counter) == {"runs": 1}
    assert host.ssedeploy_facts.hits == 1 and host.reads == 1
    other = str(tmp_path / "m")  # other arguments: another read
    assert host.get_fact(Counted, counter=other) == {"runs": 1} and host.reads == 2


@pytest.mark.parametrize("change", ["run_shell_command", "put_file", "get_file", "rsync"])
def test_anything_run_on_the_host_forgets_every_fact(host, tmp_path, change):
    counter = str(tmp_path / "n")
    host.get_fact(Counted, counter=counter)
    getattr(host, change)(StringCommand("true"))
    assert host.get_fact(Counted, counter=counter) == {"runs": 2}


def test_a_failed_operation_forgets_its_hosts_facts(host, tmp_path):
    counter = str(tmp_path / "n")
    host.get_fact(Counted, counter=counter)
    round_trips._ForgetOnChange.operation_host_error(host.state, host, "op")
    assert host.get_fact(Counted, counter=counter) == {"runs": 2}


def test_the_value_given_out_is_a_copy(host, tmp_path):
    counter = str(tmp_path / "n")
    host.get_fact(Counted, counter=counter)["runs"] = 99  # an operation changing what it was given
    assert host.get_fact(Counted, counter=counter) == {"runs": 1}


def test_facts_read_while_planning_are_read_again_when_pyinfra_may_have_waited(monkeypatch, tmp_path):
    monkeypatch.setattr(round_trips, "_handle_fact_kwargs", lambda s, h, c, a, k: (dict(k or {}), {}))
    counter = str(tmp_path / "n")
    for yes, runs in ((True, 1), (False, 2)):
        (tmp_path / "n").unlink(missing_ok=True)
        h = FakeHost(yes=yes)
        round_trips.memoize_facts(h)
        h.get_fact(Counted, counter=counter)
        h.state.current_stage = StateStage.Execute  # without -y: pyinfra's prompt came in between
        assert h.get_fact(Counted, counter=counter) == {"runs": runs}


def test_run_invariant_facts_are_kept_across_stages(monkeypatch):
    monkeypatch.setattr(round_trips, "_handle_fact_kwargs", lambda s, h, c, a, k: (dict(k or {}), {}))
    h = FakeHost(yes=False)
    memo = round_trips.memoize_facts(h)
    from pyinfra.facts.hardware import Cpus
    memo.facts[round_trips._key(h, Cpus, (), {})] = (StateStage.Prepare, 4)
    h.state.current_stage = StateStage.Execute
    assert h.get_fact(Cpus) == 4 and h.reads == 0


def test_a_batch_reads_facts_as_pyinfra_reads_them_one_by_one(host, tmp_path):
    (tmp_path / "a file").write_text("hello\n")
    (tmp_path / "d").mkdir()
    paths = [str(tmp_path / "a file"), str(tmp_path / "absent"), str(tmp_path / "d")]
    wanted = [(Sha1File, (), {"path": p}) for p in paths] + [(File, (), {"path": p}) for p in paths] + \
             [(Directory, (), {"path": p}) for p in paths] + [(PathStates, (), {"paths": paths})]
    one_by_one = [FakeHost().get_fact(cls, *args, **kwargs) for cls, args, kwargs in wanted]
    assert round_trips.prefetch(host, wanted) == len(wanted)
    assert len(host.commands) == 1  # one command for all of them
    assert [host.get_fact(cls, *args, **kwargs) for cls, args, kwargs in wanted] == one_by_one
    assert host.reads == 0


class Failing(FactBase):
    def command(self) -> str:
        return "echo half; exit 3"

    def process(self, output):
        return output


class Missing(FactBase):
    def requires_command(self) -> str:
        return "no-such-command-here"

    def command(self) -> str:
        return "no-such-command-here"


class NoNewline(FactBase):
    def command(self) -> str:
        return "printf 'a\\n\\nb'"

    def process(self, output):
        return output


def test_a_fact_that_fails_in_a_batch_is_left_to_pyinfra(host):
    assert round_trips.prefetch(host, [(Failing, (), {}), (Missing, (), {}), (NoNewline, (), {})]) == 1
    assert host.get_fact(NoNewline) == ["a", "", "b"] and host.reads == 0  # as pyinfra splits it
    host.get_fact(Failing)
    assert host.reads == 1  # read by pyinfra, which reports the failure


def test_split_keeps_the_facts_own_lines():
    token = "t"
    lines = ["@@ssedeploy-fact-start-t 0", "one", "", "@@ssedeploy-fact-end-t 0 0",  # "one\n" then our "\n"
             "@@ssedeploy-fact-start-t 1", "two@@ssedeploy-fact-end-t 1 0",  # "two" with no newline
             "@@ssedeploy-fact-start-t 2", "", "@@ssedeploy-fact-end-t 2 1"]  # nothing, exit 1
    assert round_trips._split(lines, token) == {0: (0, ["one"]), 1: (0, ["two"]), 2: (1, [])}


def test_planning_ahead_names_facts_without_reading_or_reporting(host, tmp_path, monkeypatch):
    counter = str(tmp_path / "n")
    reported = []
    monkeypatch.setattr("ssedeploy.run_results.name_files", lambda h, paths: reported.append(paths))

    def operation():
        from ssedeploy.operations.util import report_differences
        first = host.get_fact(Counted, counter=counter)
        report_differences(["/x"])
        yield f"echo {first}"

    memo = host.ssedeploy_facts
    token = round_trips._wanted.set((memo, wanted := {}))
    try:
        with pytest.raises(round_trips._Wanted):
            next(operation())
    finally:
        round_trips._wanted.reset(token)
    assert list(wanted.values()) == [(Counted, (), {"counter": counter})] and host.reads == 0
    assert not (tmp_path / "n").exists() and reported == []


def test_plan_ahead_only_with_y_and_only_while_planning():
    h = FakeHost(yes=False)
    round_trips.memoize_facts(h)
    assert round_trips.plan_ahead(h) == 0  # pyinfra plans every operation itself


def test_system_user_fact():
    fact = SystemUser()
    assert fact.process(["sseapp:x:999:997::/nonexistent:/usr/sbin/nologin", "sseapp"]) == {
        "home": "/nonexistent", "shell": "/usr/sbin/nologin", "group": "sseapp"}
    assert fact.process([]) is None and SystemUser.default() is None
    assert "getent passwd 'a b'" in fact.command(user="a b")
    root = subprocess.run(["/bin/sh", "-c", fact.command(user="root")], capture_output=True, text=True).stdout
    assert fact.process(root.splitlines())["group"] == "root"
    nobody = subprocess.run(["/bin/sh", "-c", fact.command(user="no-such-user-x")], capture_output=True, text=True)
    assert nobody.returncode == 0 and nobody.stdout == ""


@pytest.mark.parametrize("found, want", [
    (None, "useradd -d /nonexistent -s /usr/sbin/nologin -g app -r -M app"),
    ({"home": "/nonexistent", "shell": "/usr/sbin/nologin", "group": "app"}, None),
    ({"home": "/home/app", "shell": "/bin/bash", "group": "users"}, "usermod -d /nonexistent -s /usr/sbin/nologin -g app app"),
])
def test_system_user_operation(monkeypatch, found, want):
    from ssedeploy.operations import accounts
    fake = SimpleNamespace(get_fact=lambda cls, **kw: found, noop=lambda text: None)
    monkeypatch.setattr(accounts, "host", fake)
    commands = [c.get_raw_value() for c in accounts.system_user._inner(user="app", group="app")]
    assert commands == ([want] if want else [])


def test_operation_order_is_pyinfras_without_source_context():
    import pyinfra
    from pyinfra.api import util

    state = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=3)

    def nested(depth):
        if depth:
            return nested(depth - 1)
        return util.get_operation_order_from_stack(state), round_trips._operation_order(state)  # one line: same

    for is_cli in (False, True):
        pyinfra.is_cli, was = is_cli, pyinfra.is_cli
        try:
            theirs, ours = nested(3)
        finally:
            pyinfra.is_cli = was
        assert ours == theirs and len(ours) > 3
    state.current_deploy_filename = "/no/such/deploy.py"  # not on the stack: pyinfra keeps the innermost frame
    assert nested(0)[0] == nested(0)[1]


def test_operation_order_is_put_in_place_only_over_pyinfras_own(monkeypatch):
    import sys as _sys
    operation = _sys.modules["pyinfra.api.operation"]
    from pyinfra.api import util
    monkeypatch.setattr(operation, "get_operation_order_from_stack", util.get_operation_order_from_stack)
    assert round_trips.light_operation_order() and operation.get_operation_order_from_stack is round_trips._operation_order
    monkeypatch.setattr(operation, "get_operation_order_from_stack", lambda state: [])  # someone else's
    assert not round_trips.light_operation_order()
    monkeypatch.setattr(operation, "get_operation_order_from_stack", util.get_operation_order_from_stack)
    monkeypatch.setattr(round_trips, "PYINFRA_ORDER_SHA", "0" * 64)  # another pyinfra's function
    assert not round_trips.light_operation_order()
