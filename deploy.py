"""The deploy pyinfra runs: `pyinfra inventories/prod.py deploy.py`.

Settings are parsed for the host before any operation is queued, so bad inventory
data stops the run with a message naming the host, field and value.
"""

from pyinfra import host

from roles.app import app
from roles.nginx import nginx
from ssedeploy.settings import for_host

settings = for_host(host)

app(settings)
nginx(settings)
