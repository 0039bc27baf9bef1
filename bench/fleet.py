"""Fleet deploys: cold and no-op deploys of 1, 5 and 20 sandbox hosts, with the sandbox's apt cache.

    .venv/bin/python -m bench.fleet            # 1, 5 and 20 hosts; writes README (bench:fleet)
    .venv/bin/python -m bench.fleet --quick    # 1 host cold + no-op (<= 60 s with the boot):
                                               # docs/benchmarks/fleet-quick.* only

Sandbox instance `benchf`, booted once with all its hosts (20; 1 for --quick) and its apt cache (`sandbox up
--apt-cache`: apt-cacher-ng on the bridge, ssedeploy/sandbox/aptcache.py), so cold hosts fetch each package from
the archive once. Then, each with an inventory limited to the hosts it names:

- cold deploy of 1 fresh host (the cache is empty: what it fetches comes from the archive),
- cold deploy of 4 more fresh hosts at once (5 deployed), then of 15 more (20 deployed),
- no-op re-runs of 1, 5 and 20 hosts, each the median of 3 runs, noted if pyinfra changed anything in them.

Each time is the wall time of `pyinfra -y INVENTORY deploy.py` (SSH connects and fact gathering included), over
plain HTTP as the other deploy figures; operations and changes are read from the run's results file
(SSEDEPLOY_RESULTS, ssedeploy.run_results), the apt cache's figures from its transfer log (bytes fetched from the
archive and served to hosts during that run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import common, plots
from ssedeploy import run_results
from ssedeploy.inventory import HTTPS_ENV
from ssedeploy.sandbox import aptcache

INSTANCE = "benchf"
HOSTS = 20
COLD_STEPS = (1, 4, 15)  # fresh hosts deployed at once: 1, then 5, then 20 deployed
NOOP_SIZES = (1, 5, 20)
NOOP_RUNS = 3
NOOP_ONE_TARGET_S = 2.0
FLEET_FACTOR = 1.5


def mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.1f} MiB"


def cache_delta(before: dict | None, after: dict | None) -> dict | None:
    if after is None:
        return None
    before = before or {}
    return {k: v - before.get(k, 0) for k, v in after.items()}


def deploy(inventory: Path) -> dict:
    """Run deploy.py on the inventory's hosts: wall time, hosts, operations run and changed (from the results),
    and what the apt cache fetched and served meanwhile."""
    with tempfile.TemporaryDirectory(prefix="ssedeploy-benchf-results-") as tmp:
        path = Path(tmp) / "results.json"
        before = aptcache.stats(INSTANCE)
        load = os.getloadavg()[0]  # the machine is shared: how busy it was when the run started
        start = time.monotonic()
        common.run(common.BIN / "pyinfra", "-y", inventory, "deploy.py",
                   env={"SSEDEPLOY_SANDBOX": INSTANCE, "SSEDEPLOY_RESULTS": str(path), HTTPS_ENV: "0"},
                   timeout=600)  # a hung host (e.g. an apt-get that never ends) fails the run
        seconds = time.monotonic() - start
        results = run_results.load(path)  # raises if the run wrote none: no figure without knowing what changed
    if not results["hosts"]:
        raise RuntimeError(f"{inventory}: the deploy's results list no host")
    failed = results.get("failed_hosts") or {}
    if failed:
        raise RuntimeError(f"{inventory}: hosts failed: {failed}")
    operations = sum(len(h["operations"]) for h in results["hosts"].values())
    return {"seconds": seconds, "load": load, "hosts": len(results["hosts"]), "operations": operations,
            "changed": len(run_results.changes(results)), "cache": cache_delta(before, aptcache.stats(INSTANCE))}


def noop(inventory: Path, label: str) -> dict:
    """Median of NOOP_RUNS re-runs, with their times and the most operations any of them changed (the apt cache's
    figures are the first run's)."""
    runs = [deploy(inventory) for _ in range(NOOP_RUNS)]
    times = [r["seconds"] for r in runs]
    changed = max(r["changed"] for r in runs)
    common.log(f"{label}: {', '.join(f'{s:.1f}' for s in times)} s, at most {changed} operations changed")
    note = f"median of {', '.join(f'{s:.1f}' for s in times)} s" + (
        f"; **{changed} operations changed** (not a pure no-op)" if changed else "; nothing changed")
    return {**runs[0], "seconds": statistics.median(times), "runs": times, "changed": changed, "note": note,
            "load": max(r["load"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 host only, no README (docs/benchmarks/fleet-quick.*)")
    args = parser.parse_args()
    stem = "fleet-quick" if args.quick else "fleet"
    count = 1 if args.quick else HOSTS
    steps = COLD_STEPS[:1] if args.quick else COLD_STEPS
    sizes = NOOP_SIZES[:1] if args.quick else NOOP_SIZES

    started = time.monotonic()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssedeploy-benchf-") as tmp:
        with common.instance(INSTANCE, count, apt_cache=True):
            boot_s = time.monotonic() - started
            names = [h["name"] for h in common.hosts(INSTANCE)]
            if len(names) != count:
                raise RuntimeError(f"sandbox {INSTANCE} has {len(names)} hosts, not {count}")
            common.log(f"booted {count} hosts with the apt cache in {boot_s:.1f} s")
            done = 0
            for step in steps:
                new = names[done:done + step]
                row = deploy(common.write_inventory(INSTANCE, Path(tmp, f"cold-{done + step}.py"), new))
                done += step
                cache = row["cache"] or {}
                common.log(f"cold deploy of {step} fresh host(s) ({done} deployed): {row['seconds']:.1f} s, "
                            f"{row['changed']} operations changed; apt cache fetched {mib(cache.get('fetched_bytes'))}"
                            f", served {mib(cache.get('served_bytes'))}")
                rows.append({**row, "run": f"cold, {step} fresh host{'s' * (step > 1)} at once"
                                           + (f" ({done} deployed)" if done > step else ""),
                             "kind": "cold", "note": ""})
            for size in sizes:
                inventory = common.write_inventory(INSTANCE, Path(tmp, f"noop-{size}.py"), names[:size])
                rows.append({**noop(inventory, f"no-op, {size} hosts"),
                             "run": f"no-op, {size} host{'s' * (size > 1)}", "kind": "noop"})
            total_cache = aptcache.stats(INSTANCE)
            facts = common.machine(common.hosts(INSTANCE)[0])

    by_size = {r["hosts"]: r for r in rows if r["kind"] == "noop"}
    noop1 = by_size[1]["seconds"]
    targets = {f"no-op of one host <= {NOOP_ONE_TARGET_S:.0f} s":
               f"{common.verdict(noop1 <= NOOP_ONE_TARGET_S)} ({noop1:.1f} s)"}
    if HOSTS in by_size:
        noop20 = by_size[HOSTS]["seconds"]
        targets[f"{HOSTS} hosts' no-op <= {FLEET_FACTOR} x one host's"] = (
            f"{common.verdict(noop20 <= FLEET_FACTOR * noop1)} ({noop20:.1f} s vs {FLEET_FACTOR * noop1:.1f} s)")

    def cache_cells(row: dict) -> list[str]:
        cache = row["cache"]
        if not cache:
            return ["–", "–"]
        return [mib(cache["fetched_bytes"]), f"{mib(cache['served_bytes'])} ({cache['served_files']:,} files)"]

    header = ["run", "hosts", "wall time", "operations", "changed", "apt cache: fetched from the archive",
              "apt cache: served to hosts", "machine load at start", "note"]
    table = common.table(header, [[r["run"], r["hosts"], f"{r['seconds']:.1f} s", f"{r['operations']:,}",
                                   f"{r['changed']:,}", *cache_cells(r), f"{r['load']:.1f}", r["note"]] for r in rows])
    cache_line = ""
    if total_cache:
        cache_line = (f"Over the whole run the apt cache fetched {mib(total_cache['fetched_bytes'])} "
                      f"({total_cache['fetched_files']:,} files) from the archive and served "
                      f"{mib(total_cache['served_bytes'])} ({total_cache['served_files']:,} files) to the hosts. ")
    markdown = "\n".join([
        table, "",
        *[f"- target {name}: **{outcome}**" for name, outcome in targets.items()], "",
        f"Sandbox instance `{INSTANCE}`: {count} Debian 12 host{'s' * (count > 1)} booted at once in {boot_s:.1f} s with the instance's "
        "apt cache (apt-cacher-ng on the bridge: each package is fetched from the archive once, then served from the "
        "cache); each row is the wall time of `pyinfra -y INVENTORY deploy.py` with an inventory of just those "
        "hosts, plain HTTP, SSH connects and fact gathering included; cold = first deploy of freshly booted hosts "
        "(apt update, nginx and Node installed); operations and changes are summed over the run's hosts, from its "
        f"results file; no-op = median of {NOOP_RUNS} re-runs. Machine load = its 1-minute load average when the "
        f"run started (the highest of a no-op's {NOOP_RUNS}): other work on the machine's cores slows every figure. "
        f"{cache_line}{common.machine_line(facts)}",
    ])
    data = {"machine": facts, "boot_s": round(boot_s, 1), "rows": rows, "targets": targets, "apt_cache": total_cache,
            "wall_s": round(time.monotonic() - started, 1)}
    subtitle = f"{facts['nproc']} cores, pyinfra {facts['pyinfra']}, nginx {facts.get('nginx')}, {facts['date']}"
    marks = {1: NOOP_ONE_TARGET_S, HOSTS: FLEET_FACTOR * noop1}
    common.publish(stem, "fleet", markdown, data, lambda png: plots.fleet(rows, marks, png, subtitle))


if __name__ == "__main__":
    main()
