import pytest

from ssedeploy.settings import SettingsError, parse


def test_defaults_are_production_ready():
    s = parse({})
    assert s.site.sse_paths == ["/api/stream"]
    assert s.app.port == 3000
    assert s.proxy_read_timeout == 60  # 4 x the 15 s heartbeat


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
