"""nginx from the distro's packages, with ssedeploy's config: SSE settings only in the SSE locations.

The config goes live only through `nginx_config` (staged, swapped, tested, restored
on failure). nginx is reloaded once per run and only when something changed, and the
run fails unless the new workers serve the new revision; it is restarted only when
its package or its systemd drop-in changed. Which of these a run does is `plan`, a pure
function of what changed and the revisions read from the host.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from enum import Enum
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from roles import APT_LOCK_WAIT
from ssedeploy import acme
from ssedeploy import nginx as conf
from ssedeploy.facts import AcmeCerts, NginxDefaultServers, NginxRevisions, revision_request
from ssedeploy.operations import SCRIPTS, host_limits, nginx_config
from ssedeploy.run_results import note
from ssedeploy.paths import NGINX_STATE as STATE_DIR

ROLE = "nginx"  # the @deploy's name: pyinfra reports each operation below as "nginx | <name>"
# Operations the tests and `drift` look for, by name.
DEFAULT_CHECK = "No other site is nginx's default server"
TREE = "nginx config (staged, tested, swapped)"
RUNNING = "nginx is running and enabled"
RESTART = "Restart nginx (package or drop-in changed)"
RELOAD = "Reload nginx gracefully"
REVISION_CHECK = "nginx serves the new config revision"
CHALLENGE_TREE = "nginx config that answers the CA's HTTP-01 challenge (staged, tested, swapped)"
CHALLENGE_RELOAD = "Reload nginx to answer the HTTP-01 challenge"
ISSUE = "ACME certificate from the CA"
INSTALL = "ACME certificate goes live (nginx -t)"
CERT_CHECK = "nginx serves the live ACME certificate"


def reported(name: str) -> str:
    """An operation's name as pyinfra reports it (log, results): prefixed by the @deploy's name."""
    return f"{ROLE} | {name}"


class Action(Enum):
    NOTHING = "nothing"
    RESTART = "restart"    # a new binary or new file limits need a new master process
    RELOAD = "reload"      # new config or certificate: new workers, old ones finish their streams
    CONVERGE = "converge"  # nothing changed, but nginx serves an older revision than the live files


@dataclass(frozen=True)
class Plan:
    action: Action
    check_revision: bool  # afterwards, wait until nginx serves the live revision (or fail the run)


def plan(*, package: bool, drop_in: bool, tree: bool, certificate: bool, live: str | None,
         served: str | None, certificate_stale: bool = False) -> Plan:
    """What nginx needs, from what this run changed (package, systemd drop-in, config tree, certificate)
    and the revisions read before it: of the live files, and the one nginx serves (None: unknown).
    `certificate_stale`: nginx serves another ACME certificate than the live one (a cut before a reload)."""
    if package or drop_in:
        return Plan(Action.RESTART, check_revision=True)  # a new master loads the live tree too
    if tree or certificate:
        return Plan(Action.RELOAD, check_revision=True)
    if (live is not None and served != live) or certificate_stale:
        # A run died between putting a config live and reloading: finish it though no file changes.
        return Plan(Action.CONVERGE, check_revision=True)
    return Plan(Action.NOTHING, check_revision=False)


def revisions_fact(settings) -> dict:
    return {"port": settings.site.revision_port, "state_dir": STATE_DIR}


def reads(settings) -> list:
    """The facts the role reads while pyinfra plans ((fact, args, kwargs); deploy.py reads them in one go)."""
    tls = settings.site.tls
    own = ([(AcmeCerts, (), acme.fact_args(settings))] if tls and tls.mode == "acme" else
           [(File, (), {"path": path}) for path in conf.tls_paths(settings)] if tls and tls.mode != "files" else [])
    return [*own, (NginxDefaultServers, (), {}), (NginxRevisions, (), revisions_fact(settings))]


def served_revision_check(settings, timeout: int = 10, state_dir: str = STATE_DIR) -> str:
    """Poll the loopback revision until nginx serves the one the swap recorded (reloads are asynchronous):
    scripts/revision-wait.sh inlined with its arguments, as server.shell runs it."""
    return shlex.join(["sh", "-c", (SCRIPTS / "revision-wait.sh").read_text(), "revision-wait",
                       f"{state_dir}/revision", str(timeout), revision_request(settings.site.revision_port)])


def tls(settings):
    """The certificate and key nginx serves: yours, or a self-signed pair made on the host once."""
    cert, key = conf.tls_paths(settings)
    tls = settings.site.tls
    files.directory(name="TLS directory", path=conf.TLS_DIR, user="root", group="root", mode="700")
    if tls.mode == "files":
        return [
            files.put(name="TLS certificate", src=tls.certificate, dest=cert, mode="644"),
            files.put(name="TLS key", src=tls.key, dest=key, mode="600"),
        ]
    apt.packages(name="Install openssl", packages=["openssl"], extra_install_args=APT_LOCK_WAIT)
    if host.get_fact(File, path=cert) and host.get_fact(File, path=key):
        return []
    names = [n for n in settings.site.server_names if n != "_"] or [host.name]
    san = ",".join(f"DNS:{n}" for n in names)
    return [server.shell(
        name="Self-signed TLS certificate",
        commands=[
            f"openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj /CN={names[0]} "
            f"-addext subjectAltName={san} -keyout {key} -out {cert} 2>/dev/null && chmod 600 {key}"
        ],
    )]


def acme_certificate(settings) -> tuple[list, acme.Plan]:
    """An ACME certificate for site.server_names (ssedeploy/acme.py decides, scripts/acme-cert.sh acts):
    the operations that put a certificate live, and the plan. certbot asks the CA only when the plan says
    so; if it fails, nothing after it runs and nginx serves what it served."""
    tls = settings.site.tls
    apt.packages(name="Install certbot and openssl", packages=["certbot", "openssl"], extra_install_args=APT_LOCK_WAIT)
    files.directory(name="TLS directory", path=conf.TLS_DIR, user="root", group="root", mode="700")
    files.directory(name="HTTP-01 webroot", path=conf.ACME_WEBROOT, user="root", group="root", mode="755")
    files.put(name="acme-cert.sh", src=str(SCRIPTS / "acme-cert.sh"), dest=acme.SCRIPT, mode="755")
    files.put(name="certbot renewal hook", src=StringIO(acme.renew_hook(settings)), dest=acme.hook_path(settings),
              mode="755")
    if tls.directory_ca:
        files.put(name="ACME directory's CA bundle", src=tls.directory_ca, dest=acme.DIRECTORY_CA, mode="644")
    else:
        files.file(name="ACME directory's CA bundle", path=acme.DIRECTORY_CA, present=False)
    drop_in = (files.put(name="certbot.service drop-in", src=StringIO(acme.certbot_drop_in()),
                         dest=acme.CERTBOT_DROP_IN, mode="644") if tls.directory_ca else
               files.file(name="certbot.service drop-in", path=acme.CERTBOT_DROP_IN, present=False))
    systemd.daemon_reload(name="systemd daemon-reload (certbot)", _if=drop_in.did_change)

    certs = host.get_fact(AcmeCerts, **acme.fact_args(settings))
    now = int(time.time())
    decided = acme.plan(settings.site.server_names, tls.directory, certs, now)
    note(host, acme.describe(certs, decided, now))
    if decided.challenge_first:
        # The CA fetches its token from the live site: put the challenge location live first, the site served
        # over TLS only with a certificate it has already (else plain HTTP until the certificate exists).
        before = conf.file_tls_paths(settings)  # a self-signed or own pair the site served until now
        keep = not decided.tls_now and all(host.get_fact(File, path=p) for p in before)
        pre = nginx_config(name=CHALLENGE_TREE, settings=settings, tls_live=decided.tls_now or keep,
                           tls_files=before if keep else None)
        systemd.service(name="nginx is running (HTTP-01)", service="nginx", running=True)
        systemd.service(name=CHALLENGE_RELOAD, service="nginx", reloaded=True, _if=pre.did_change)
        server.shell(name=f"{REVISION_CHECK} (HTTP-01)", commands=[served_revision_check(settings)],
                     _if=pre.did_change)
    if decided.request:
        server.shell(name=f"{ISSUE} ({decided.request})", commands=[shlex.join(acme.issue_command(settings))])
    if decided.install:
        return [server.shell(name=INSTALL, commands=[shlex.join(acme.install_command(settings))])], decided
    return [], decided


def default_server(settings):
    """With server_name `_` the site must be nginx's default server: another site that claims it on the
    same port is named here and the host stops before the swap (nginx -t would refuse both)."""
    claims = conf.foreign_default_servers(host.get_fact(NginxDefaultServers), settings)
    if claims:
        message = (
            f"host {host.name}: another site is nginx's default server on a port of ssedeploy's site "
            f"(site.server_names has '_', so ssedeploy's site must be the default): {'; '.join(claims)}. "
            "Remove default_server from that listen line (or disable that site), or give "
            "site.server_names the real host names instead of '_'."
        )
        server.shell(name=DEFAULT_CHECK, commands=[f"echo {shlex.quote(message)} >&2; exit 1"])


@deploy(ROLE)
def nginx(settings):
    apt.update(name="apt lists are fresh", cache_time=3600)
    package = apt.packages(name="Install nginx", packages=["nginx"], extra_install_args=APT_LOCK_WAIT)
    drop_in = files.put(
        name=f"nginx.service drop-in {conf.DROP_IN}", src=StringIO(conf.drop_in(host_limits(settings))),
        dest=conf.DROP_IN, mode="644",
    )
    systemd.daemon_reload(name="systemd daemon-reload", _if=drop_in.did_change)
    if conf.plain_http_warning(settings):
        note(host, conf.plain_http_warning(settings))
    acme_plan = None
    if settings.site.tls and settings.site.tls.mode == "acme":
        certificate, acme_plan = acme_certificate(settings)
    else:
        certificate = tls(settings) if settings.site.tls else []
    default_server(settings)
    tree = nginx_config(name=TREE, settings=settings)
    systemd.service(name=RUNNING, service="nginx", running=True, enabled=True)

    revisions = host.get_fact(NginxRevisions, **revisions_fact(settings))

    def decide(changed) -> Plan:
        return plan(package=changed(package), drop_in=changed(drop_in), tree=changed(tree),
                    certificate=any(changed(op) for op in certificate),
                    certificate_stale=bool(acme_plan and acme_plan.stale), **revisions)

    def at_run() -> Plan:  # what the operations above did, known only while the run executes
        return decide(lambda op: op.did_change())

    # A convergence reload already certain now (nothing will change) runs unconditionally, so that a dry
    # run, and so `drift`, lists it as a change. Only a change-free plan converges: when even that one does
    # not (nginx serves the live revision), the operations above are not planned twice to find out.
    certain = (decide(lambda op: False).action is Action.CONVERGE
               and decide(lambda op: op.will_change).action is Action.CONVERGE)
    systemd.service(name=RESTART, service="nginx", restarted=True, _if=lambda: at_run().action is Action.RESTART)
    systemd.service(name=RELOAD, service="nginx", reloaded=True,
                    _if=None if certain else lambda: at_run().action in (Action.RELOAD, Action.CONVERGE))
    server.shell(name=REVISION_CHECK, commands=[served_revision_check(settings)],
                 _if=None if certain else lambda: at_run().check_revision)
    if acme_plan:  # the reload is proven by the serial nginx serves, not only by the config revision
        server.shell(name=CERT_CHECK, commands=[shlex.join(acme.wait_command(settings))],
                     _if=None if certain else lambda: at_run().check_revision)
