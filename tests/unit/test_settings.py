import pytest

from ssedeploy.check import check
from ssedeploy.inventory import inventory_hosts
from ssedeploy.settings import SettingsError, merge, near_miss, parse


def test_defaults_are_production_ready():
    s = parse({})
    assert s.site.sse_paths == ["/api/stream"]
    assert s.app.port == 3000
    assert s.app.instance_ports == (3000, 3001) and s.app.bind == "127.0.0.1"
    assert s.app.drain_seconds + s.app.stop_timeout < s.nginx.worker_shutdown_timeout  # 30 + 15 < 60
    assert s.proxy_read_timeout == 60  # 4 x the 15 s heartbeat


def test_both_instance_ports_can_be_chosen():
    assert parse({"app": {"ports": [4000, 5000]}}).app.instance_ports == (4000, 5000)
    assert parse({"app": {"ports": [4000, 5000], "port": 4000}}).app.instance_ports == (4000, 5000)
    assert parse({"app": {"bind": "fd00::1"}}).app.bind == "fd00::1"


@pytest.mark.parametrize("bad", ["/a;b", "/a{", "/a}", '/a"b', "/a'b", "/$x", "/a b", "/a\nb", "relative", ""])
def test_sse_path_that_could_break_out_of_nginx_is_rejected(bad):
    with pytest.raises(SettingsError) as err:
        parse({"site": {"sse_paths": [bad]}}, "web-1")
    msg = str(err.value)
    assert "host web-1" in msg and "site.sse_paths.0" in msg and repr(bad) in msg
    assert "no spaces" in msg  # says what is allowed


def test_unknown_key_is_a_typo_not_ignored():
    with pytest.raises(SettingsError, match=r"site.sse_path = .*unknown setting"):
        parse({"site": {"sse_path": ["/x"]}})


@pytest.mark.parametrize("field,value", [("port", 0), ("port", 70000), ("name", "Bad Name")])
def test_bad_app_values_name_field_and_value(field, value):
    with pytest.raises(SettingsError, match=rf"app.{field} = {value!r}"):
        parse({"app": {field: value}})


@pytest.mark.parametrize("name", ["example.com", "*.example.com", "_", "a-b.c.d"])
def test_server_names_accepted(name):
    assert parse({"site": {"server_names": [name]}}).site.server_names == [name]


@pytest.mark.parametrize("name", ["exa mple.com", "a;b", "$host", "a{b}"])
def test_server_names_rejected(name):
    with pytest.raises(SettingsError, match="site.server_names.0"):
        parse({"site": {"server_names": [name]}})


# -- refusals: each names host, field, value and what is allowed ---------------------------------

REFUSED = [
    # (data, field = value, words of the explanation)
    ({"app": {"port": 80}}, "app.port = 80", "nginx listens on 80 (site.listen_port)"),
    ({"app": {"port": 443}, "site": {"tls": {}}}, "app.port = 443", "nginx listens on 443 (site.tls.port)"),
    ({"app": {"port": 8443}, "site": {"tls": {"port": 8443}}}, "app.port = 8443", "site.tls.port"),
    ({"app": {"port": 8573}}, "app.port = 8573", "site.revision_port"),
    ({"app": {"port": 9000}, "site": {"revision_port": 9000}}, "app.port = 9000", "site.revision_port"),
    ({"app": {"port": 8080}, "site": {"listen_port": 8080}}, "app.port = 8080", "site.listen_port"),
    ({"app": {"port": 81}}, "app.port = 81", "1024 or above"),
    ({"app": {"port": 8572}}, "app.port = 8572", "the second instance's port 8573 (app.port + 1): nginx listens"),
    ({"app": {"port": 65535}}, "app.port = 65535", "choose both with app.ports"),
    ({"app": {"ports": [3000, 3000]}}, "app.ports = [3000, 3000]", "two different ports"),
    ({"app": {"ports": [3000]}}, "app.ports = [3000]", "at least 2"),
    ({"app": {"ports": [3000, 80]}}, "app.ports = [3000, 80]", "nginx listens on 80"),
    ({"app": {"ports": [4000, 4001], "port": 3000}}, "app.port = 3000", "set app.ports alone"),
    ({"app": {"bind": "0.0.0.0"}}, "app.bind = '0.0.0.0'", "not every address"),
    ({"app": {"bind": "localhost"}}, "app.bind = 'localhost'", "must be an IP address"),
    ({"app": {"drain_seconds": 50}}, "app.drain_seconds = 50", "must stay below nginx.worker_shutdown_timeout (60 s)"),
    ({"app": {"drain_seconds": 5, "stop_timeout": 10}, "nginx": {"worker_shutdown_timeout": 15}},
     "app.drain_seconds = 5", "(15 s) must stay below"),
    ({"app": {"user": "root"}}, "app.user = 'root'", "must not run as root"),
    ({"app": {"name": "root"}}, "app.name = 'root'", "must not run as root"),
    ({"site": {"sse_paths": ["/a", "/b", "/a"]}}, "site.sse_paths.2 = '/a'", "listed twice (also site.sse_paths.0)"),
    ({"site": {"sse_paths": ["/"]}}, "site.sse_paths.0 = '/'", "cannot be the whole site"),
    ({"site": {"listen_port": 443, "tls": {}}}, "site.tls.port = 443", "must differ from site.listen_port"),
    ({"site": {"revision_port": 80}}, "site.revision_port = 80", "must differ"),
    ({"sitee": {"sse_paths": ["/x"]}}, "sitee = {'sse_paths': ['/x']}", "did you mean `site`?"),
    ({"Site": {}}, "Site = {}", "did you mean `site`?"),
    ({"ngnix": {}}, "ngnix = {}", "did you mean `nginx`?"),
    ({"apps": {}}, "apps = {}", "did you mean `app`?"),
    ({"APP": {}}, "APP = {}", "did you mean `app`?"),
]


@pytest.mark.parametrize("data,where,why", REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_before_any_host_is_touched(data, where, why):
    with pytest.raises(SettingsError) as err:
        parse(data, "web-1")
    assert f"host web-1: {where}: " in str(err.value) and why in str(err.value), str(err.value)


@pytest.mark.parametrize("data", [
    {"app": {"port": 3000}, "ssh_user": "deploy", "_sudo": True, "api": {}, "size": 3, "apt": 1, "stage": "x"},
    {"app": {"port": 1024, "user": "web"}, "site": {"sse_paths": ["/events", "/events/live"]}},
    {"app": {"port": 8443}, "site": {"tls": {}}, "ssl": {}},
    {"app": {"port": 8573}, "site": {"listen_port": 8080, "revision_port": 8081}},
])
def test_other_top_level_keys_and_distinct_ports_are_accepted(data):
    parse(data, "web-1")


@pytest.mark.parametrize("key,want", [
    ("site", None), ("sitee", "site"), ("sites", "site"), ("siet", "site"), ("SITE", "site"), ("ngnix", "nginx"),
    ("nginxx", "nginx"), ("ap", "app"), ("App", "app"), ("ssh_user", None), ("_sudo", None), ("api", None),
    ("apt", None), ("size", None), ("stage", None), ("name", None), (3, None),
])
def test_near_miss(key, want):
    assert near_miss(key) == want


# -- layering: pyinfra's data layers merge per field ---------------------------------------------

def test_merge_dicts_per_key_lists_and_values_replace():
    low = {"source": "a", "env": {"A": "1", "B": "2"}, "tls": {"mode": "files"}, "paths": ["/a"]}
    high = {"env": {"B": "3"}, "paths": ["/b"], "tls": None}
    assert merge(low, high) == {"source": "a", "env": {"A": "1", "B": "3"}, "tls": None, "paths": ["/b"]}
    assert low["env"] == {"A": "1", "B": "2"}  # inputs untouched


def test_inventory_layers_merge_per_field(tmp_path):
    """A real pyinfra inventory file: group data and host data each set part of `app` and `site`."""
    app_dir = tmp_path / "built"
    app_dir.mkdir()
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text('nginx = {"worker_shutdown_timeout": 50}\n')
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        "web = (\n"
        "    [('web-1', {'app': {'env': {'FEATURE': 'on'}}, 'site': {'sse_paths': ['/events']}}),\n"
        "     ('web-2', {'nginx': {'expected_streams': 500}})],\n"
        f"    {{'app': {{'source': {str(app_dir)!r}, 'env': {{'REGION': 'eu'}}}}, 'site': {{'server_names': ['example.com']}}}},\n"
        ")\n"
        "canary = (['web-2'], {'app': {'heartbeat_seconds': 5}})\n"
    )
    hosts = dict(inventory_hosts(str(inventory)))
    one, two = parse(hosts["web-1"], "web-1"), parse(hosts["web-2"], "web-2")
    assert one.app.source == str(app_dir) and one.app.env == {"REGION": "eu", "FEATURE": "on"}
    assert one.site.server_names == ["example.com"] and one.site.sse_paths == ["/events"]
    assert two.app.source == str(app_dir) and two.app.heartbeat_seconds == 5 and two.app.env == {"REGION": "eu"}
    assert two.nginx.expected_streams == 500
    assert one.nginx.worker_shutdown_timeout == two.nginx.worker_shutdown_timeout == 50  # group_data/all.py


def test_sandbox_style_host_settings_survive_an_inventory_that_adds_its_own(tmp_path, monkeypatch):
    """sandbox_hosts() entries may carry settings; an inventory's group dicts on top do not drop them."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        "hosts = ([('h-1', {'ssh_hostname': '198.18.0.2', 'app': {'env': {'FROM_SANDBOX': '1'}}})],\n"
        "         {'app': {'name': 'web', 'env': {'FROM_GROUP': '1'}}})\n"
    )
    data = dict(inventory_hosts(str(inventory)))["h-1"]
    assert parse(data, "h-1", offline=True).app.env == {"FROM_SANDBOX": "1", "FROM_GROUP": "1"}
    assert data["ssh_hostname"] == "198.18.0.2"  # pyinfra's own keys untouched


def test_a_base_site_lies_under_every_layer_and_an_own_tls_replaces_its_whole(tmp_path):
    """The sandbox's HTTPS default (ssedeploy_base_site): an inventory that sets its own `site` on top keeps it
    field by field, whatever Python dict it builds; its own `tls` replaces the base's, and None drops it."""
    from ssedeploy.settings import BASE_SITE_KEY

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    base = {"server_names": ["h-1.demo.ssedeploy.test"],
            "tls": {"mode": "acme", "email": "s@example.org", "directory": "https://198.18.0.1:14000/dir",
                    "directory_ca": str(ca)}}
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"sandbox = {{'ssh_hostname': '198.18.0.2', {BASE_SITE_KEY!r}: {base!r}}}\n"
        "hosts = [('own-paths', {**sandbox, 'site': {'sse_paths': ['/events']}}),\n"
        "         ('self-signed', {**sandbox, 'site': {'tls': {'mode': 'self-signed'}, 'server_names': ['_']}}),\n"
        "         ('plain', {**sandbox, 'site': {'tls': None}})]\n"
        "group = (['own-paths'], {'site': {'tls': {'port': 8443}}})\n"
    )
    hosts = {name: parse(data, name, offline=True) for name, data in inventory_hosts(str(inventory))}
    # the group's tls replaces the base's whole: port 8443 with the default mode (self-signed)
    assert hosts["own-paths"].site.tls.mode == "self-signed" and hosts["own-paths"].site.tls.port == 8443
    assert hosts["own-paths"].site.sse_paths == ["/events"]
    assert hosts["own-paths"].site.server_names == ["h-1.demo.ssedeploy.test"]
    assert hosts["self-signed"].site.tls.mode == "self-signed" and hosts["self-signed"].site.server_names == ["_"]
    assert hosts["plain"].site.tls is None
    only_base = tmp_path / "base.py"
    only_base.write_text(f"hosts = [('h-1', {{{BASE_SITE_KEY!r}: {base!r}, 'site': {{'sse_paths': ['/e']}}}})]\n")
    (name, data), = inventory_hosts(str(only_base))
    settings = parse(data, name, offline=True)
    assert settings.site.tls.mode == "acme" and settings.site.tls.directory_ca == str(ca)
    assert settings.site.sse_paths == ["/e"] and settings.site.server_names == ["h-1.demo.ssedeploy.test"]


def test_check_refuses_a_near_miss_key_in_an_inventory(tmp_path, capsys):
    inventory = tmp_path / "inventory.py"
    inventory.write_text("hosts = [('web-1', {'sitee': {'sse_paths': ['/x']}})]\n")
    assert check(str(inventory)) == 1
    assert "host web-1: sitee = {'sse_paths': ['/x']}: not a key ssedeploy reads; did you mean `site`?" in \
        capsys.readouterr().out
