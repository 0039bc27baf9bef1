"""Property-based: nothing that could break out of an nginx directive gets through the model."""

import string
import tempfile
from pathlib import Path

import crossplane
from hypothesis import example, given, settings as hsettings, strategies as st

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
def test_plain_paths_are_accepted_but_not_the_whole_site(rest):
    msg = rejected({"site": {"sse_paths": ["/" + rest]}})
    if rest:
        assert msg is None
    else:
        assert msg and "site.sse_paths.0 = '/': cannot be the whole site" in msg


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


def balanced_for_nginx(raw: str) -> bool:
    """Are the braces balanced as nginx's tokenizer sees them (quoted braces do not count)? crossplane's
    lexer is nginx's, so the test does not restate the validator's own rule."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "raw.conf")
        path.write_text(raw)
        try:
            tokens = list(crossplane.lex(str(path)))
        except crossplane.errors.NgxParserBaseException:
            return False  # e.g. an unterminated quote
    depth = 0
    for token, _, quoted in tokens:
        depth += (token == "{" and not quoted) - (token == "}" and not quoted)
        if depth < 0:
            return False
    return depth == 0


@given(st.text(max_size=40))
@example("x '{';")  # a quoted brace is balanced for nginx
@example("x {")
def test_raw_directives_need_balanced_braces(raw):
    msg = rejected({"site": {"extra_directives": [raw]}})
    if not balanced_for_nginx(raw):
        assert msg and "site.extra_directives.0" in msg
    if raw == "x '{';":
        assert msg is None


@given(listen=st.integers(1024, 65535), revision=st.integers(1024, 65535), tls=st.none() | st.integers(1024, 65535),
       app=st.integers(1, 65535))
def test_an_app_port_nginx_listens_on_is_refused(listen, revision, tls, app):
    data = {"site": {"listen_port": listen, "revision_port": revision, **({"tls": {"port": tls}} if tls else {})},
            "app": {"port": app}}
    msg = rejected(data)
    if len({listen, revision, tls} - {None}) < (3 if tls else 2):
        assert msg  # nginx's own ports clash
    elif app == 65535:  # the app's own fields are checked first
        assert msg and "app.port + 1" in msg and "app.ports" in msg
    elif app in (listen, revision, tls):
        assert msg and f"app.port = {app}: nginx listens on {app}" in msg
    elif app < 1024:
        assert msg and f"app.port = {app}" in msg and "1024" in msg
    elif app + 1 in (listen, revision, tls):  # the second instance's port
        assert msg and f"app.port = {app}: the second instance's port {app + 1} (app.port + 1): nginx listens" in msg
    else:
        assert msg is None


@given(paths=st.lists(st.sampled_from(["/a", "/b", "/api/stream", "/a/b"]), min_size=1, max_size=6))
def test_duplicate_sse_paths_are_refused_naming_both(paths):
    msg = rejected({"site": {"sse_paths": paths}})
    dupes = [i for i, p in enumerate(paths) if p in paths[:i]]
    if dupes:
        first = dupes[0]
        assert msg and f"site.sse_paths.{first} = {paths[first]!r}" in msg
        assert f"also site.sse_paths.{paths.index(paths[first])}" in msg
    else:
        assert msg is None


@given(key=st.sampled_from(["site", "nginx", "app"]), edit=st.sampled_from(["upper", "double", "drop", "swap"]))
def test_near_misses_of_settings_keys_are_refused(key, edit):
    typo = {"upper": key.upper(), "double": key + key[-1], "drop": key[:-1], "swap": key[1] + key[0] + key[2:]}[edit]
    msg = rejected({typo: {}})
    assert msg and f"host h: {typo} = {{}}: " in msg and f"did you mean `{key}`" in msg


@given(key=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12))
def test_other_top_level_keys_pass_unless_a_near_miss(key):
    from ssedeploy.settings import near_miss

    msg = rejected({key: 1}) if key not in ("site", "nginx", "app") else None
    assert (msg is not None) == bool(near_miss(key))


@given(name=st.sampled_from(["root", "web"]), user=st.sampled_from([None, "root", "svc"]))
def test_the_app_never_runs_as_root(name, user):
    msg = rejected({"app": {"name": name, **({"user": user} if user else {})}})
    assert (msg is not None) == ((user or name) == "root")
    if msg:
        assert "must not run as root" in msg
