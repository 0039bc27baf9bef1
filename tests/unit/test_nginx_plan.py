"""What the nginx role does after a run's changes: restart, reload, reload to converge, or nothing."""

import pytest

from roles.nginx import Action, Plan, plan

A, B = "0123456789abcdef", "fedcba9876543210"  # two config revisions

RESTART, RELOAD, CONVERGE, NOTHING = (Plan(Action.RESTART, True), Plan(Action.RELOAD, True),
                                      Plan(Action.CONVERGE, True), Plan(Action.NOTHING, False))


@pytest.mark.parametrize("package,drop_in,tree,certificate,live,served,want", [
    # what changed this run                  revisions before the run
    (False, False, False, False, A, A, NOTHING),        # a no-op re-run
    (False, False, False, False, None, None, NOTHING),  # ssedeploy never put a config live
    (True, False, False, False, A, A, RESTART),         # a new nginx binary
    (False, True, False, False, A, A, RESTART),         # new file limits need a new master
    (True, True, True, True, A, A, RESTART),            # a restart loads the new tree too: no reload
    (False, False, True, False, A, A, RELOAD),          # new config
    (False, False, False, True, A, A, RELOAD),          # new certificate
    (False, False, True, True, A, A, RELOAD),
    (False, False, False, False, B, A, CONVERGE),       # a run died between the swap and the reload
    (False, False, False, False, A, None, CONVERGE),    # nginx does not serve the revision at all
    (False, False, True, False, B, A, RELOAD),          # the reload for the new tree converges too
    (False, True, False, False, B, A, RESTART),         # so does the restart
    (False, False, False, False, None, A, NOTHING),     # no live revision recorded: nothing to converge to
])
def test_plan(package, drop_in, tree, certificate, live, served, want):
    assert plan(package=package, drop_in=drop_in, tree=tree, certificate=certificate,
                live=live, served=served) == want
