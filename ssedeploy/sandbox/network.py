"""The sandbox's kernel network state: one bridge, one /24 and one nftables table per instance.

Everything is named after the instance (bridge `ssd-<name>`, table `inet
ssedeploy_<name>`), so cleanup works from what the kernel shows, even when the state
files that described it were in another checkout. Hosts may reach only the package
archive's addresses (tcp 80/443) through NAT, and get no resolver.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import zlib
from pathlib import Path

SUPERNET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range
RUN_DIR = Path("/run/ssedeploy")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BRIDGE_PREFIX = "ssd-"
TABLE_PREFIX = "ssedeploy_"


def bridge_name(instance: str) -> str:
    return BRIDGE_PREFIX + instance


def table_name(instance: str) -> str:
    return TABLE_PREFIX + instance.replace("-", "_")


def subnets() -> list[ipaddress.IPv4Network]:
    return list(SUPERNET.subnets(new_prefix=24))


def preferred_subnet(instance: str) -> ipaddress.IPv4Network:
    """`demo` gets 198.18.0.0/24; other instances a stable /24 derived from their name."""
    nets = subnets()
    if instance == "demo":
        return nets[0]
    return nets[1 + zlib.crc32(instance.encode()) % (len(nets) - 1)]


def choose_subnet(instance: str, in_use: set[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    nets = subnets()
    start = nets.index(preferred_subnet(instance))
    for i in range(len(nets)):
        net = nets[(start + i) % len(nets)]
        if net not in in_use:
            return net
    raise RuntimeError("every /24 in 198.18.0.0/15 is in use")


def _ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def addresses() -> dict[str, list[ipaddress.IPv4Interface]]:
    """Interface name -> its IPv4 addresses, as the kernel shows them."""
    result: dict[str, list[ipaddress.IPv4Interface]] = {}
    for link in _ip_json("-4", "addr", "show"):
        result[link["ifname"]] = [
            ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}") for a in link.get("addr_info", [])
        ]
    return result


def links() -> set[str]:
    return {link["ifname"] for link in _ip_json("link", "show")}


def subnets_in_use(except_bridge: str | None = None) -> set[ipaddress.IPv4Network]:
    used = set()
    for ifname, addrs in addresses().items():
        if ifname == except_bridge:
            continue
        used |= {a.network.supernet(new_prefix=24) if a.network.prefixlen > 24 else a.network for a in addrs}
    return used


def bridge_subnet(instance: str) -> ipaddress.IPv4Network | None:
    for addr in addresses().get(bridge_name(instance), []):
        if addr in SUPERNET or addr.ip in SUPERNET:
            return addr.network
    return None


def ensure_bridge(instance: str, subnet: ipaddress.IPv4Network) -> None:
    """Create the bridge or adopt one left by an earlier run (same name, any state)."""
    name = bridge_name(instance)
    gateway = f"{subnet[1]}/{subnet.prefixlen}"
    if name not in links():
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    current = {str(a) for a in addresses().get(name, [])}
    for addr in current - {gateway}:
        subprocess.run(["ip", "addr", "del", addr, "dev", name], check=True)
    if gateway not in current:
        subprocess.run(["ip", "addr", "add", gateway, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def delete_bridge(instance: str) -> None:
    subprocess.run(["ip", "link", "del", bridge_name(instance)], capture_output=True)


def resolve(hostnames: list[str]) -> list[str]:
    addrs = set()
    for name in hostnames:
        for info in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM):
            addrs.add(info[4][0])
    return sorted(addrs)


def ruleset(instance: str, subnet: ipaddress.IPv4Network, archive_addrs: list[str]) -> str:
    """nftables table: hosts may reach each other (one private network, as a cluster's proxies and app hosts
    are; bridged traffic passes this chain where br_netfilter is loaded) and the archive on 80/443, and
    nothing else off the bridge."""
    bridge = bridge_name(instance)
    elements = ", ".join(archive_addrs)
    return f"""table inet {table_name(instance)} {{
  set archive {{
    type ipv4_addr
    elements = {{ {elements} }}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{bridge}" oifname "{bridge}" accept
    iifname "{bridge}" ip daddr @archive tcp dport {{ 80, 443 }} accept
    iifname "{bridge}" drop
    oifname "{bridge}" ct state established,related accept
    oifname "{bridge}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} ip daddr @archive oifname != "{bridge}" masquerade
  }}
}}
"""


def ensure_table(instance: str, subnet: ipaddress.IPv4Network, archive_addrs: list[str]) -> None:
    """(Re)load the instance's table atomically: delete any stale one and add it in one batch."""
    script = ""
    if table_exists(instance):
        script += f"delete table inet {table_name(instance)}\n"
    script += ruleset(instance, subnet, archive_addrs)
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def table_exists(instance: str) -> bool:
    return instance_tables().count(table_name(instance)) > 0


def instance_tables() -> list[str]:
    out = subprocess.run(["nft", "list", "tables", "inet"], capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.split()[-1].startswith(TABLE_PREFIX)]


def delete_table(instance: str) -> None:
    subprocess.run(["nft", "delete", "table", "inet", table_name(instance)], capture_output=True)


def enable_forwarding() -> None:
    """Turn ip_forward on, remembering the machine's own value the first time."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    saved = RUN_DIR / "ip_forward.orig"
    if not saved.exists():
        saved.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")


def restore_forwarding_if_unused() -> None:
    """Put ip_forward back once no sandbox instance is left on the machine."""
    if any(name.startswith(BRIDGE_PREFIX) for name in links()) or instance_tables():
        return
    saved = RUN_DIR / "ip_forward.orig"
    if saved.exists():
        IP_FORWARD.write_text(saved.read_text())
        saved.unlink()
