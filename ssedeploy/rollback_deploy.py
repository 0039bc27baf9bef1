"""What `ssedeploy rollback INVENTORY` runs with pyinfra: make each host's previous release live again."""

from pyinfra import host

from ssedeploy.deploy_lock import hold
from ssedeploy.run_results import record_run
from ssedeploy.operations import app_activate
from ssedeploy.paths import app_dir
from ssedeploy.settings import for_host

settings = for_host(host)
record_run(host.state)
hold(host)
app_activate(name="Previous release live and checked", settings=settings, release=None, app_dir=app_dir(settings))
