"""The running hosts of the local sandbox instance ($SSEDEPLOY_SANDBOX, default `demo`).

    ssedeploy sandbox up && pyinfra -y inventories/sandbox.py deploy.py
"""

from ssedeploy.inventory import sandbox_hosts

sandbox = sandbox_hosts()
