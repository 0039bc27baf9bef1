"""What `ssedeploy rollback INVENTORY` runs with pyinfra: make each host's previous release live again."""

from pyinfra import host

from roles.app import app_dir
from ssedeploy.deploy_lock import hold
from ssedeploy.run_summary import report_failed_hosts
from ssedeploy.operations import app_activate
from ssedeploy.settings import for_host

settings = for_host(host)
report_failed_hosts(host.state)
hold(host)
app_activate(name="Previous release live and checked", settings=settings, release=None, app_dir=app_dir(settings))
