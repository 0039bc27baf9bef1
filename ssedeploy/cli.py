"""The `ssedeploy` command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from . import sandbox


def _sandbox_up(args) -> int:
    hosts = sandbox.up(args.name, args.count, args.distro, log=_err, cert_validity=args.cert_validity,
                       apt_cache=args.apt_cache)
    for h in hosts:
        print(f"{h['name']}  {h['address']}  {h['distro']}  ssh: ssedeploy sandbox ssh {h['name']}")
    return 0


def _sandbox_status(args) -> int:
    hosts = sandbox.status(args.name)
    if args.json:
        print(json.dumps(hosts, indent=2))
    elif not hosts:
        print(f"sandbox {args.name!r}: no host is running")
    else:
        for h in hosts:
            print(f"{h['name']}  {h['address']}  {h['distro']}  pid {h['pid']}")
    return 0


def _sandbox_down(args) -> int:
    sandbox.down(args.name, log=_err)
    for name in sandbox.down_stale(log=_err):
        _err(f"cleaned stale sandbox {name!r}")
    return 0


def _sandbox_ssh(args) -> int:
    hosts = sandbox.status(args.name)
    if not hosts:
        raise sandbox.SandboxError(f"sandbox {args.name!r} has no running host")
    match = [h for h in hosts if args.host in (h["name"], h["address"])]
    if args.host and not match:  # `ssh -- CMD`: the first word is the command, not a host
        args.command = [args.host, *args.command]
    h = (match or hosts)[0]
    cmd = [
        "ssh", "-i", h["ssh_key"], "-o", f"UserKnownHostsFile={h['known_hosts']}",
        "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", f"{h['ssh_user']}@{h['address']}",
        *args.command,
    ]
    os.execvp("ssh", cmd)


def _sandbox_node(args) -> int:
    """Install an official Node.js on this machine from the sandbox's mirror, checked like a host's; print its bin/."""
    from pathlib import Path

    from . import node
    from .sandbox import instance, nodemirror

    spec = args.version or node.DEFAULT
    try:
        node.check_spec(spec)
        if spec == node.DISTRO:
            raise ValueError("needs a release line or an exact version")
        instance.require_root()  # the cache and the install are under /var/cache
        mirror = nodemirror.ensure(log=_err)
        home = node.install_local(mirror.as_uri(), spec, nodemirror.machine_arch(), Path("/var/cache/ssedeploy/node"))
    except (ValueError, OSError, node.NodeError, nodemirror.MirrorError) as exc:
        raise sandbox.SandboxError(f"sandbox node {spec}: {exc} (the mirror has {', '.join(nodemirror.VERSIONS)})")
    print(home / "bin")
    return 0


def _check(args) -> int:
    from .check import check  # pyinfra's CLI machinery only when needed

    return check(args.inventory, args.limit.split(",") if args.limit else None)


def _pyinfra(args, deploy_file: str, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of ssedeploy's deploy files with pyinfra, from the checkout so roles/ and templates/ are found."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [str(Path(sys.executable).with_name("pyinfra")), *flags, os.path.abspath(args.inventory),
           str(repo / "ssedeploy" / deploy_file)]
    if args.limit:
        cmd[1:1] = ["--limit", args.limit]
    return subprocess.run(cmd, cwd=repo, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          **({"capture_output": True, "text": True} if "--dry" in flags else {}))


def _rollback(args) -> int:
    return _pyinfra(args, "rollback_deploy.py", "-y", env={"SSEDEPLOY_ROLLBACK_TO": args.to or ""}).returncode


def _releases(args) -> int:
    """Each host's kept releases, newest made live first: read with a dry run, printed from its results."""
    import tempfile
    from pathlib import Path

    from . import run_results

    with tempfile.TemporaryDirectory(prefix="ssedeploy-releases-") as tmp:
        path = Path(tmp) / "results.json"
        run = _pyinfra(args, "releases_deploy.py", "--dry", env={"SSEDEPLOY_RESULTS": str(path)})
        try:
            data = run_results.load(path)
        except run_results.ResultsError as e:
            _err(run.stdout + run.stderr + f"\nssedeploy releases: {e}")
            return 3
    if run.returncode or data["failed_hosts"]:
        _err(run.stdout + run.stderr)
    if args.json:
        print(json.dumps({name: h["facts"].get("releases") for name, h in data["hosts"].items()}, indent=2))
    else:
        print("\n".join(releases_lines(data, args.limit_releases)))
    return 1 if data["failed_hosts"] else 0


def releases_lines(data: dict, count: int | None = None) -> list[str]:
    """`ssedeploy releases` as text, from the results of releases_deploy.py: per host, newest made live first."""
    lines = []
    for name, h in data["hosts"].items():
        rows = h["facts"].get("releases")
        if rows is None:
            lines.append(f"{name}: could not read its releases ({h['failed_at']})")
            continue
        lines.append(f"{name}: {len(rows)} release(s) kept" + ("" if rows else " (none deployed yet)"))
        lines += [f"  {row['id']}  {row['made_live'] or 'never live':20}  {row['state']}".rstrip()
                  for row in rows[:count]]
    return lines


def _probe(args) -> int:
    from .probe import EXIT, format_text, probe

    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"ssedeploy probe: --header {h!r} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    resolve = {}
    for r in args.resolve:
        name, sep, addr = r.rpartition(":")
        if not sep or not name:
            raise SystemExit(f"ssedeploy probe: --resolve {r!r} is not NAME:ADDR")
        resolve[name] = addr
    report = probe(args.url, duration=args.duration, expect_interval=args.expect_interval, resume=args.resume,
                   headers=headers, resolve=resolve, insecure=args.insecure, http2=args.http2)
    print(report.to_json() if args.json else format_text(report))
    return EXIT[report.verdict]


def _verify(args) -> int:
    from .verify import drift, verify

    run = drift if args.command == "drift" else verify
    return run(args.inventory, args.limit, args.junitxml, args.pytest_args)


def _err(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssedeploy", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probe", help="does this SSE URL really stream? (exit 0 streaming, 1 buffered, 2 not-sse, 3 error)")
    pr.add_argument("url")
    pr.add_argument("--duration", type=float, default=10.0, help="seconds to read at most (default 10)")
    pr.add_argument("--expect-interval", type=float, help="seconds between events, if the stream has a cadence")
    pr.add_argument("--resume", action="store_true", help="reconnect with Last-Event-ID and check the ids continue")
    pr.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    pr.add_argument("--resolve", action="append", default=[], help="NAME:ADDR, like curl's (repeatable)")
    pr.add_argument("--insecure", action="store_true", help="accept self-signed certificates")
    pr.add_argument("--http2", action="store_true", help="HTTP/2 over TLS")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_probe)
    for name, text in (("verify", "check every host of an inventory (testinfra): 0 ok, 1 a check failed, 3 error"),
                       ("drift", "would a deploy change anything? dry run + verify: 0 no drift, 1 drift/failure, 3 error")):
        vf = sub.add_parser(name, help=text)
        vf.add_argument("inventory")
        vf.add_argument("--limit", help="comma-separated host or group names, like pyinfra's --limit")
        vf.add_argument("--junitxml", help="write a JUnit XML report (for CI)")
        vf.set_defaults(func=_verify, pytest_args=[])  # further pytest options go after `--`
    ck = sub.add_parser("check", help="validate settings and lint every host's nginx config, offline")
    ck.add_argument("inventory")
    ck.add_argument("--limit", help="comma-separated host or group names, like pyinfra's --limit")
    ck.set_defaults(func=_check)
    rb = sub.add_parser("rollback", help="make each host's previous (or --to ID) release live again, through the "
                                         "same start, check, switch and drain as a release")
    rb.add_argument("inventory")
    rb.add_argument("--limit", help="comma-separated host or group names, like pyinfra's --limit")
    rb.add_argument("--to", help="a kept release's id (or a unique prefix of it) instead of the previous one")
    rb.set_defaults(func=_rollback)
    rl = sub.add_parser("releases", help="each host's kept releases: when each was made live, which is live and previous")
    rl.add_argument("inventory")
    rl.add_argument("--limit", help="comma-separated host or group names, like pyinfra's --limit")
    rl.add_argument("-n", "--releases", dest="limit_releases", type=int, default=None,
                    help="show at most N releases per host (newest first)")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=_releases)
    sb = sub.add_parser("sandbox", help="disposable local hosts (systemd-nspawn)")
    sbsub = sb.add_subparsers(dest="action", required=True)
    name_help = "instance name (default: $SSEDEPLOY_SANDBOX or 'demo')"

    up = sbsub.add_parser("up", help="make sure the instance has N running hosts")
    up.add_argument("-n", "--count", type=int, default=1)
    up.add_argument("--distro", default="debian12", choices=list(sandbox.DISTROS))
    up.add_argument("--cert-validity", type=int, metavar="SECONDS",
                    help="how long the instance's ACME CA makes certificates valid (0: pebble's 5 years; "
                         "default: a running instance's, else 0)")
    up.add_argument("--apt-cache", action="store_true",
                    help="run an apt cache (apt-cacher-ng) on the instance's bridge and make its hosts' apt use it, "
                         "so many cold hosts fetch each package once; kept until `down`")
    up.set_defaults(func=_sandbox_up)
    st = sbsub.add_parser("status", help="list the instance's running hosts")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_sandbox_status)
    dn = sbsub.add_parser("down", help="stop the hosts and remove everything the instance made")
    dn.set_defaults(func=_sandbox_down)
    sh = sbsub.add_parser("ssh", help="open a shell (or run a command) on a host")
    sh.add_argument("host", nargs="?")
    sh.add_argument("command", nargs=argparse.REMAINDER)
    sh.set_defaults(func=_sandbox_ssh)
    nd = sbsub.add_parser("node", help="install an official Node.js on this machine from the sandbox's mirror "
                                       "(for builds); prints its bin directory")
    nd.add_argument("--version", help="a release line such as 24 or an exact version such as 24.22.3 "
                                      "(default: ssedeploy's default line)")
    nd.set_defaults(func=_sandbox_node)
    for cmd in (up, st, dn, sh):
        cmd.add_argument("--name", default=sandbox.current_name(), help=name_help)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if argv[:1] in (["verify"], ["drift"]) and "--" in argv:  # the rest is for pytest
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    args = parser().parse_args(argv)
    if extra:
        args.pytest_args = extra
    try:
        return args.func(args)
    except sandbox.SandboxError as exc:
        _err(f"ssedeploy: {exc}")
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
