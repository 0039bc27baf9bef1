"""Property-based: nothing that could break out of an nginx directive gets through the model."""

import string

from hypothesis import given, settings as hsettings, strategies as st

from ssedeploy.settings import Settings, SettingsError, parse

FORBIDDEN = [";", "{", "}", '"', "'", "$", " ", "\n", "\t", "\r", "\\"]


def rejected(data) -> str | None:
    try:
        parse(data, "h")
    except SettingsError as exc:
        return str(exc)
    return None


@given(
    prefix=st.text(alphabet=string.ascii_letters + "/-_", max_size=10),
    bad=st.sampled_from(FORBIDDEN),
    suffix=st.text(max_size=10),
)
@hsettings(max_examples=300)
def test_sse_paths_with_a_forbidden_character_are_rejected(prefix, bad, suffix):
    path = "/" + prefix + bad + suffix
    msg = rejected({"site": {"sse_paths": [path]}})
    assert msg and "site.sse_paths.0" in msg and repr(path) in msg


@given(st.text(alphabet=string.ascii_letters + string.digits + "/-_.~", max_size=30))
def test_plain_paths_are_accepted(rest):
    assert rejected({"site": {"sse_paths": ["/" + rest]}}) is None


@given(name=st.text(min_size=1, max_size=20), bad=st.sampled_from(FORBIDDEN))
def test_server_names_with_a_forbidden_character_are_rejected(name, bad):
    assert "site.server_names.0" in (rejected({"site": {"server_names": [name + bad]}}) or "")


@given(st.integers().filter(lambda p: not 1 <= p <= 65535))
def test_ports_out_of_range_are_rejected(port):
    assert f"app.port = {port!r}" in (rejected({"app": {"port": port}}) or "")


@given(key=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=15),
       section=st.sampled_from(["site", "nginx", "app"]))
def test_unknown_keys_are_never_ignored(key, section):
    if key in Settings.model_fields[section].annotation.model_fields:
        return
    assert "unknown setting" in (rejected({section: {key: 1}}) or "")


@given(heartbeat=st.integers(1, 300), timeout=st.integers(1, 2000))
def test_read_timeout_must_outlast_four_heartbeats(heartbeat, timeout):
    msg = rejected({"app": {"heartbeat_seconds": heartbeat}, "nginx": {"proxy_read_timeout": timeout}})
    if timeout < 4 * heartbeat:
        assert msg and f"nginx.proxy_read_timeout = {timeout}" in msg
    else:
        assert msg is None


@given(st.text(max_size=40))
def test_raw_directives_need_balanced_braces(raw):
    msg = rejected({"site": {"extra_directives": [raw]}})
    if raw.count("{") != raw.count("}"):
        assert msg and "site.extra_directives.0" in msg
