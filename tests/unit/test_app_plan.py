"""When the app owes a release of its unit or environment: a note left on the host, file contents."""

import pytest

from roles.app import PendingPlan, pending_plan

UNIT, ENV = "/etc/systemd/system/sseapp@.service", "/etc/sseapp/env"
U1, U2, E1, E2 = "u1", "u2", "e1", "e2"  # sha256 digests, shortened

NONE = PendingPlan(pending=False, mark=False)
MARK = PendingPlan(pending=True, mark=True)
NOTED = PendingPlan(pending=True, mark=False)


@pytest.mark.parametrize("marker,on_host,wanted,want", [
    # note on host  files on the host            files this run writes
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E1}, NONE),       # nothing differs (a new build alone is no note)
    (False, {UNIT: U1, ENV: E1}, {UNIT: U2, ENV: E1}, MARK),       # the unit changes
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E2}, MARK),       # the environment changes
    (False, {UNIT: None, ENV: None}, {UNIT: U1, ENV: E1}, MARK),   # a fresh host
    (False, {UNIT: U1, ENV: None}, {UNIT: U1, ENV: E1}, MARK),     # the env file is gone
    (True, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E1}, NOTED),       # a run died before releasing
    (True, {UNIT: U1, ENV: E1}, {UNIT: U2, ENV: E1}, NOTED),       # noted already: not again
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1}, NONE),                # drift: env not managed
    (False, {UNIT: U1, ENV: None}, {UNIT: U1}, NONE),
])
def test_pending_plan(marker, on_host, wanted, want):
    assert pending_plan(marker=marker, on_host=on_host, wanted=wanted) == want
