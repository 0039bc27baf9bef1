"""Example production inventory: copy, fill in your servers, run

    pyinfra inventories/prod.py deploy.py

Each entry is (name, data). Connection data is pyinfra's own (`ssh_*`, `_sudo`);
ssedeploy reads its settings from the `site` and `app` keys (README: Settings), here
given once for the whole group. Host keys are checked: put the servers' keys in the
known_hosts file first (e.g. `ssh-keyscan -t ed25519 HOST >> inventories/known_hosts`
after checking the fingerprint out of band).
"""

SSH = {
    "ssh_user": "deploy",  # a login user with passwordless sudo; root login stays off
    "ssh_key": "~/.ssh/id_ed25519",
    "ssh_known_hosts_file": "inventories/known_hosts",
    "ssh_strict_host_key_checking": "yes",
    "_sudo": True,
}

web = (
    [
        # Each host serves its own names, so each gets its own certificate (HTTP-01 reaches the host a name
        # points to). Several hosts behind one name: README, Certificates.
        ("web-1", {"ssh_hostname": "web-1.example.com", **SSH,
                   "site": {"server_names": ["example.com", "www.example.com"]}}),
        ("web-2", {"ssh_hostname": "web-2.example.com", **SSH, "site": {"server_names": ["eu.example.com"]}}),
    ],
    {
        "site": {
            "sse_paths": ["/api/stream"],
            # HTTPS (and so HTTP/2: every EventSource of a page on one connection) with a certificate from
            # Let's Encrypt, renewed by certbot's timer through ssedeploy's validated reload. Each name must
            # point at the host that asks for it. Try the staging CA first:
            #   "directory": "https://acme-staging-v02.api.letsencrypt.org/directory"
            # Or your own pair: {"mode": "files", "certificate": "certs/example.com.crt", "key": "certs/example.com.key"}
            "tls": {"mode": "acme", "email": "ops@example.com"},
        },
        "nginx": {"expected_streams": 10000},
        # node: an LTS line (its newest official build, checked by SHA-256), an exact version, or "distro"
        "app": {"name": "sseapp", "port": 3000, "heartbeat_seconds": 15, "node": "24"},
    },
)
