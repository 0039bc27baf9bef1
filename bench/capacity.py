"""Capacity and latency of concurrent SSE streams: direct to the app, ssedeploy's nginx, stock nginx.

    .venv/bin/python -m bench.capacity            # 1,000 and 10,000 streams per case, 30 s hold; writes README
    .venv/bin/python -m bench.capacity --quick    # 1,000 streams, 10 s hold; docs/benchmarks/capacity-quick.*
    .venv/bin/python -m bench.capacity --cases b --levels 10000   # one piece (docs/benchmarks/capacity-custom.*)

Sandbox instance `bench`, two hosts: bench-1 deployed by deploy.py (cases a, b), bench-2 by
bench/stock_deploy.py (cases c, d). The load client (bench/sse-load.js) runs on the host under test, so
all four cases have the same placement and latency is measured on one clock. One case runs at a time;
before each, the app and nginx are restarted so CPU and memory figures start from a clean process. The app
runs as two instances (sseapp@PORT.service); case (a) and the restarts use the live one, read on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common, plots
from ssedeploy.instances import unit_name
from ssedeploy.settings import parse

INSTANCE = "bench"
CLIENT = Path(__file__).with_name("sse-load.js")
REMOTE_DIR = "/tmp/ssedeploy-bench"
RATE = 1000  # connects per second during the ramp
CASES = {
    "a": "(a) direct to the app",
    "b": "(b) ssedeploy's nginx",
    "c": "(c) stock nginx + copied SSE block",
    "d": "(d) stock nginx + plain proxy_pass",
}
URLS = {"a": "http://127.0.0.1:{port}/api/stream", "b": "http://127.0.0.1:80/api/stream",
        "c": "http://127.0.0.1:80/api/stream", "d": "http://127.0.0.1:80/api/stream"}
VARIANT = {"c": "sse", "d": "plain"}
STOCK_PORT = 3000  # where bench/nginx/stock-*.conf proxy to
LOG_ALERTS = ("worker_connections are not enough", "Too many open files")
WAIT_HEALTHY = (
    "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 "
    "&& grep -q ' 200 ' <&3) 2>/dev/null && exit 0; sleep 0.1; done; echo 'no 200 from {port}' >&2; exit 1"
)


def deploy_hosts(tmp: Path, variant: str | None = None, which: tuple[str, ...] = ("1", "2")) -> None:
    """bench-1 with deploy.py, bench-2 with bench/stock_deploy.py; in parallel (first run: both cold)."""
    jobs = {
        "1": (common.write_inventory(INSTANCE, tmp / "h1.py", [f"{INSTANCE}-1"]), "deploy.py", {}),
        "2": (common.write_inventory(INSTANCE, tmp / "h2.py", [f"{INSTANCE}-2"]), "bench/stock_deploy.py",
              {"SSEDEPLOY_BENCH_VARIANT": variant or "sse"}),
    }
    start = time.monotonic()
    procs = {}
    try:
        for key in which:
            inventory, deploy, env = jobs[key]
            procs[key] = subprocess.Popen(
                [str(common.BIN / "pyinfra"), "-y", str(inventory), deploy], cwd=common.REPO, text=True,
                env=dict(os.environ, SSEDEPLOY_SANDBOX=INSTANCE, **env), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)
        for key, proc in procs.items():
            out, _ = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"{jobs[key][1]} on {INSTANCE}-{key} exited {proc.returncode}\n{out[-4000:]}")
            common.log(f"{INSTANCE}-{key}: {jobs[key][1]} {jobs[key][2] or ''} done at {time.monotonic() - start:.1f} s")
    finally:  # on failure or Ctrl-C: end the deploys this started
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_case(host: dict, case: str, streams: int, hold: int) -> dict:
    port = common.live_port(host)
    if case in VARIANT and port != STOCK_PORT:
        raise RuntimeError(f"{host['name']}: the app is live on port {port}, the stock site proxies to {STOCK_PORT}")
    app_unit = unit_name(parse({}).app.name, port)
    units = app_unit if case == "a" else f"nginx.service,{app_unit}"
    # Clean processes for each case; the app must answer before the first connect.
    log_size = common.ssh(host, f"sudo systemctl restart {app_unit} nginx && "
                          f"bash -c {common.quoted(WAIT_HEALTHY.format(port=port))} && "
                          "sudo stat -c %s /var/log/nginx/error.log").strip()
    command = common.quoted("node", f"{REMOTE_DIR}/sse-load.js", "--url", URLS[case].format(port=port),
                            "--streams", streams, "--rate", RATE, "--hold", hold, "--units", units,
                            "--connect-timeout", 10)
    common.log(f"case {case}: {streams:,} streams on {host['name']}, ramp {streams / RATE:.0f} s + hold {hold} s")
    result = json.loads(common.ssh(host, command, timeout=streams / RATE + hold + 120))
    tail = f"sudo tail -c +{int(log_size) + 1} /var/log/nginx/error.log"
    alerts = {text: int(common.ssh(host, f"{tail} | grep -c {common.quoted(text)} || true").strip() or 0)
              for text in LOG_ALERTS}
    nginx, app = result["units"].get("nginx.service", {}), result["units"][app_unit]
    per_stream = result.pop("per_stream")
    return {
        "case": case, "streams": streams, "healthy": result["healthy"], "p50": result["latency_ms"]["p50"],
        "p99": result["latency_ms"]["p99"], "errors": result["errors"], "nginx_cpu": nginx.get("cpu_pct"),
        "app_cpu": app["cpu_pct"], "nginx_mem": nginx.get("mem_peak_bytes"), "app_mem": app["mem_peak_bytes"],
        "mem_source": app["mem_source"], "log_alerts": alerts, "client": result["client"],
        "unhealthy_sample": [s for s in per_stream if not s["ok"]][:5], "raw": result,
    }


def fmt(value, digits=1, scale=1.0, none="–"):
    return none if value is None else f"{value / scale:.{digits}f}"


def report(rows: list[dict], facts: dict, hold: int) -> tuple[str, dict]:
    header = ["case", "streams", "healthy", "p50 ms", "p99 ms", "errors", "nginx CPU %", "app CPU %",
              "nginx RSS MiB", "app RSS MiB", '"worker_connections are not enough"']
    lines = []
    for r in rows:
        errors = ", ".join(f"{kind}: {n:,}" for kind, n in sorted(r["errors"].items())) or "none"
        nginx = r["case"] != "a"
        lines.append([CASES[r["case"]], f"{r['streams']:,}", f"{r['healthy']:,}", fmt(r["p50"]), fmt(r["p99"]),
                      errors, fmt(r["nginx_cpu"] if nginx else None, 0), fmt(r["app_cpu"], 0),
                      fmt(r["nginx_mem"] if nginx else None, 0, 2**20), fmt(r["app_mem"], 0, 2**20),
                      f"{r['log_alerts']['worker_connections are not enough']:,}" if nginx else "–"])
    get = {(r["case"], r["streams"]): r for r in rows}
    targets = []
    b10k = get.get(("b", 10_000))
    targets.append(("ssedeploy: >= 10,000 healthy concurrent streams",
                    "not run at this level" if not b10k else
                    f"{common.verdict(b10k['healthy'] >= 10_000)} ({b10k['healthy']:,})"))
    a1k, b1k = get.get(("a", 1000)), get.get(("b", 1000))
    if a1k and b1k and a1k["p99"] is not None and b1k["p99"] is not None:
        ok = b1k["p99"] <= a1k["p99"] + 5
        targets.append(("ssedeploy: p99 at 1,000 streams within 5 ms of direct",
                        f"{common.verdict(ok)} ({b1k['p99']:.1f} vs {a1k['p99']:.1f} ms)"))
    else:
        targets.append(("ssedeploy: p99 at 1,000 streams within 5 ms of direct", "not run"))
    markdown = "\n".join([
        common.table(header, lines), "",
        *[f"- target {name}: **{outcome}**" for name, outcome in targets], "",
        f"Streams opened at {RATE:,}/s and held {hold} s after the ramp; healthy = 200, at least "
        "(seconds open - 3) events and no gap over 1.5 s; latency = receipt minus the event's `ts`, all events, "
        "same host clock. CPU = % of one core over the hold; RSS = peak of the unit's processes "
        f"({rows[0]['mem_source'] if rows else '?'}), sampled every 5 s. Client, app and nginx share the host's cores.",
        "",
        common.machine_line(facts),
    ])
    return markdown, {"machine": facts, "hold_s": hold, "rate": RATE, "targets": dict(targets), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 streams, 10 s hold; no README")
    parser.add_argument("--cases", default="abcd", help="subset of abcd (not written to the README)")
    parser.add_argument("--levels", help="comma-separated stream counts (not written to the README)")
    parser.add_argument("--hold", type=int, help="seconds to hold after the ramp")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")] if args.levels else [1000] if args.quick else [1000, 10_000]
    hold = args.hold or (10 if args.quick else 30)
    if any(n > 15_000 or n < 1 for n in levels) or not 1 <= hold <= 300 or set(args.cases) - set(CASES):
        parser.error("levels 1..15000 (the hosts' fd limit is 20000), hold 1..300 s, cases from abcd")
    custom = args.cases != "abcd" or args.levels or args.hold
    stem = "capacity-custom" if custom else "capacity-quick" if args.quick else "capacity"

    started = time.monotonic()
    rows = []
    with common.instance(INSTANCE, 2), tempfile.TemporaryDirectory(prefix="ssedeploy-bench-") as tmp:
        tmp = Path(tmp)
        hosts = {h["name"]: h for h in common.hosts(INSTANCE)}
        h1, h2 = hosts[f"{INSTANCE}-1"], hosts[f"{INSTANCE}-2"]
        need = tuple(k for k, cs in (("1", "ab"), ("2", "cd")) if set(cs) & set(args.cases))
        first_stock = next((c for c in args.cases if c in VARIANT), "c")
        deploy_hosts(tmp, VARIANT.get(first_stock), need)
        for h in (h1, h2):
            common.ssh(h, f"mkdir -p {REMOTE_DIR} && cat > {REMOTE_DIR}/sse-load.js", input=CLIENT.read_text())
        facts = common.machine(h1 if "1" in need else h2)
        variant = VARIANT.get(first_stock)
        for case in sorted(args.cases):
            if case in VARIANT and VARIANT[case] != variant:
                variant = VARIANT[case]
                deploy_hosts(tmp, variant, ("2",))
            for streams in levels:
                row = run_case(h1 if case in "ab" else h2, case, streams, hold)
                common.log(f"  healthy {row['healthy']:,}/{streams:,}, p50 {row['p50']} ms, p99 {row['p99']} ms, "
                           f"errors {row['errors'] or 'none'}")
                rows.append(row)
    markdown, data = report(rows, facts, hold)
    data["wall_s"] = round(time.monotonic() - started, 1)
    subtitle = f"{facts['nproc']} cores, nginx {facts.get('nginx')}, Node {facts.get('node')}, {facts['date']}"
    common.publish(stem, "capacity", markdown, data, lambda png: plots.capacity(rows, CASES, png, subtitle))


if __name__ == "__main__":
    main()
