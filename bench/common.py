"""Shared bits of the benchmarks: own sandbox instances, SSH to their hosts, pyinfra runs, machine facts,
tables and the README markers.

Every benchmark boots its own instance and tears it down in a `finally`, also on Ctrl-C or SIGTERM;
the only processes it starts are its subprocesses (sandbox CLI, pyinfra, ssh), each with a timeout.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from ssedeploy import instances
from ssedeploy.facts import AppInstances, parse_instances
from ssedeploy.paths import app_dir
from ssedeploy.settings import Settings, parse

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = REPO / "docs" / "benchmarks"
README = REPO / "README.md"


def log(*parts) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def run(*args: str, timeout: float = 900, env: dict | None = None, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=REPO, env=dict(os.environ, **(env or {})), input=input,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # run the `finally` teardowns on SIGTERM too


@contextmanager
def instance(name: str, count: int = 1, apt_cache: bool = False):
    """Boot sandbox instance `name` with `count` hosts (and its apt cache: `sandbox up --apt-cache`); always
    `sandbox down` it afterwards."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        up(name, count, apt_cache)
        yield name
    finally:
        log(f"tearing down sandbox {name}")
        run(BIN / "ssedeploy", "sandbox", "down", "--name", name, check=False, timeout=300)


def up(name: str, count: int, apt_cache: bool = False) -> list[dict]:
    run(BIN / "ssedeploy", "sandbox", "up", "--name", name, "--count", str(count),
        *(["--apt-cache"] if apt_cache else []), timeout=900)
    return hosts(name)


def hosts(name: str) -> list[dict]:
    return json.loads(run(BIN / "ssedeploy", "sandbox", "status", "--name", name, "--json").stdout)


def write_inventory(name: str, path: Path, limit: list[str] | None = None, data: dict | None = None) -> Path:
    """A pyinfra inventory for the instance's hosts (optionally some of them, with extra host data), over plain
    HTTP as the benchmarks have always measured (the sandbox's HTTPS default would add TLS to every figure)."""
    path.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        f"hosts = [(n, dict(d, **{data or {}!r})) for n, d in sandbox_hosts({name!r}, https=False)"
        f" if {limit!r} is None or n in {limit!r}]\n"
    )
    return path


def ssh_args(host: dict) -> list[str]:
    return ["ssh", "-i", host["ssh_key"], "-o", f"UserKnownHostsFile={host['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15",
            "-p", str(host["port"]), f"{host['ssh_user']}@{host['address']}"]


def ssh(host: dict, command: str, timeout: float = 120, input: str | None = None, check: bool = True) -> str:
    return run(*ssh_args(host), command, timeout=timeout, input=input, check=check).stdout


def app_instances(host: dict, settings: Settings | None = None, cluster: bool = False) -> instances.HostInstances:
    """The app's instances on a host, read with the deploy's own fact (default settings' app); `cluster`: an
    app host of a cluster (its live instance is the one it recorded)."""
    settings = settings or parse({})
    app = settings.app
    command = AppInstances().command(app=app.name, app_dir=app_dir(settings), ports=app.instance_ports,
                                     revision_port=settings.site.revision_port, cluster=cluster)
    return parse_instances(ssh(host, f"sudo bash -c {shlex.quote(command)}").splitlines())


def live_port(host: dict, settings: Settings | None = None) -> int:
    """The port of the app instance nginx sends to (its loopback /ssedeploy/upstream, else its site file); on a
    host whose nginx is not ssedeploy's (bench/stock_deploy.py), the one instance that runs."""
    settings = settings or parse({})
    found = app_instances(host, settings)
    port = instances.live_port(found, settings.app.instance_ports)
    if port is not None:
        return port
    running = [port for port, inst in sorted(found.instances.items()) if inst.running]
    if len(running) != 1:
        raise RuntimeError(f"{host['name']}: no live app instance to tell (running: {running or 'none'})")
    return running[0]


def node(port: int, settings: Settings | None = None) -> str:
    """The node binary the app's instance on `port` runs (its release's Node): load clients run on it, as
    sandbox hosts have no Node on PATH."""
    from roles.app import node_bin
    return node_bin(settings or parse({})).replace("%i", str(port)) + "/node"


def poll(condition, seconds: float, every: float = 0.2) -> bool:
    """Call `condition` until it is true (True) or `seconds` have passed (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def machine(host: dict | None = None) -> dict:
    """The machine and the versions the figures depend on (nginx and Node as installed on the sandbox host)."""
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', Path("/etc/os-release").read_text(), re.M))
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "host distro": os_release.get("PRETTY_NAME", "?"),
        "pyinfra": version("pyinfra"),
    }
    if host:
        release_node = f"{app_dir(parse({}))}/current/.ssedeploy-node/bin/node"  # hosts have no Node on PATH
        out = ssh(host, f"/usr/sbin/nginx -v 2>&1; node --version 2>/dev/null || {release_node} --version 2>/dev/null"
                  " || echo '?'; . /etc/os-release; echo $PRETTY_NAME", check=False)
        lines = out.strip().splitlines() + ["?"] * 3
        facts["nginx"] = lines[0].split("/", 1)[-1].strip() if "/" in lines[0] else lines[0]
        facts["node"] = lines[1].lstrip("v")
        facts["sandbox host"] = lines[2]
    return facts


def machine_line(facts: dict) -> str:
    return "Measured " + ", ".join(f"{k}: {v}" for k, v in facts.items()) + "."


def build(tmp: Path, mark: str) -> str:
    """A build of examples/sse-app whose content hash differs from the others' by one file."""
    source = tmp / f"app-{mark}"
    shutil.copytree(REPO / "examples" / "sse-app", source)
    (source / "release-mark.txt").write_text(mark + "\n")
    return str(source)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# The columns and targets of a release seen by streaming clients (bench/release_cost.py, bench/rolling.py).
STREAM_COLUMNS = ["clients", "clients cut", "max cuts per client", "worst gap s", "worst gap - retry s", "lost ids",
                  "non-200", "fallback", "probes' worst first event s", "deploy wall time s"]


def stream_cells(row: dict) -> list[str]:
    """STREAM_COLUMNS' cells of one event's row (tests/e2e/eventsource.py's Report, and the deploy's time)."""
    return [fmt(row[key]) for key in ("clients", "clients_cut", "max_cuts_per_client", "worst_gap_s",
                                      "worst_gap_minus_retry_s", "lost_ids", "non_200", "fallback_answers",
                                      "probe_worst_first_event_s")] + [fmt(row["deploy_wall_s"], 1)]


def stream_targets(rows: list[dict]) -> dict[str, str]:
    """What no stream may notice of a release, PASS or FAIL over every event's row."""
    non_200, fallback = sum(r["non_200"] for r in rows), sum(r["fallback_answers"] for r in rows)
    lost, cuts = sum(r["lost_ids"] for r in rows), max(r["max_cuts_per_client"] for r in rows)
    gaps = [r["worst_gap_minus_retry_s"] for r in rows if r["worst_gap_minus_retry_s"] is not None]
    return {
        "zero non-200 answers": f"{verdict(non_200 == 0)} ({non_200})",
        "zero fallback answers": f"{verdict(fallback == 0)} ({fallback})",
        "zero lost ids": f"{verdict(lost == 0)} ({lost})",
        "at most 1 cut per client": f"{verdict(cuts <= 1)} ({cuts})",
        "worst gap - retry <= 1 s": f"{verdict(max(gaps) <= 1)} ({max(gaps):.2f} s)" if gaps
                                    else "PASS (no stream was cut)",
    }


def publish(stem: str, full: str, markdown: str, data: dict, plot=None) -> None:
    """Write docs/benchmarks/STEM.{md,json,png} (`plot(path)` draws the PNG; no plot, no PNG) and print the
    table; the full run (STEM == FULL) also puts it between README.md's `bench:FULL` markers."""
    DOCS.mkdir(parents=True, exist_ok=True)

    def image(prefix: str) -> str:
        return f"\n\n![{full}]({prefix}{stem}.png)" if plot else ""
    (DOCS / f"{stem}.md").write_text(markdown + image("") + "\n")
    (DOCS / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    if plot:
        plot(DOCS / f"{stem}.png")
    if stem == full:
        write_readme(full, markdown + image("docs/benchmarks/"))
    print(markdown)
    wrote = "md,json,png" if plot else "md,json"
    log(f"{full} benchmark done in {data['wall_s']:.0f} s; wrote docs/benchmarks/{stem}.{{{wrote}}}"
        + (" and README.md" if stem == full else ""))


def write_readme(marker: str, markdown: str) -> None:
    """Replace what is between `<!-- bench:MARKER -->` and `<!-- /bench:MARKER -->` in README.md."""
    text = README.read_text()
    start, end = f"<!-- bench:{marker} -->", f"<!-- /bench:{marker} -->"
    if start not in text or end not in text:
        raise RuntimeError(f"README.md has no {start} ... {end} markers")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n{markdown}\n{end}{after}")


def quoted(*args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)
