"""The app's Node: settings values, a line resolved on a download site's index, checksums, engines."""

from __future__ import annotations

import json

import pytest

from ssedeploy import engines, node
from ssedeploy.release import content_of, name as release_name
from ssedeploy.settings import SettingsError, parse

INDEX = [  # index.json's shape: newest first, `files` naming the builds
    {"version": "v26.12.1", "files": ["linux-x64", "linux-arm64"], "lts": "Lemon"},
    {"version": "v24.22.3", "files": ["linux-x64", "linux-arm64"], "lts": "Krypton"},
    {"version": "v24.22.1", "files": ["linux-x64"], "lts": "Krypton"},
    {"version": "v24.9.0", "files": ["linux-x64", "linux-arm64"], "lts": False},
    {"version": "v22.23.5", "files": ["linux-x64", "linux-arm64"], "lts": "Jod"},
    {"version": "v20.0.0-rc.1", "files": ["linux-x64"], "lts": False},
]


@pytest.mark.parametrize("spec, arch, want", [
    ("24", "x64", "24.22.3"),         # a line: its newest release (numerically: 24.22 > 24.9)
    ("24", "arm64", "24.22.3"),
    ("22", "x64", "22.23.5"),
    ("24.22.1", "x64", "24.22.1"),    # an exact version never moves
    ("24.9.0", "arm64", "24.9.0"),
])
def test_a_spec_resolves_to_a_listed_build(spec, arch, want):
    assert node.resolve(spec, INDEX, arch) == want


@pytest.mark.parametrize("spec, arch, says", [
    ("18", "x64", "no Node.js 18.x release with a linux-x64 build"),
    ("20", "x64", "no Node.js 20.x release"),                  # a release candidate is not a release
    ("24.22.1", "arm64", "24.22.1 with a linux-arm64 build is not listed"),
    ("24.99.0", "x64", "24.99.0 with a linux-x64 build is not listed"),
])
def test_a_spec_with_no_build_is_refused_naming_what_is_missing(spec, arch, says):
    with pytest.raises(node.NodeError, match=says):
        node.resolve(spec, INDEX, arch)


SUMS = ("3a1f" * 16 + "  node-v24.22.3-linux-x64.tar.gz\n"
        + "b2c3" * 16 + "  node-v24.22.3-linux-x64.tar.xz\n"
        + "c4d5" * 16 + "  node-v24.22.3-linux-arm64.tar.xz\n")


def test_the_checksum_is_the_line_for_that_very_file():
    assert node.sha256_for(SUMS, node.tarball("24.22.3", "x64")) == "b2c3" * 16
    assert node.sha256_for(SUMS, "node-v24.22.3-linux-arm64.tar.xz") == "c4d5" * 16
    with pytest.raises(node.NodeError, match="no checksum for node-v24.22.1"):
        node.sha256_for(SUMS, "node-v24.22.1-linux-x64.tar.xz")


@pytest.mark.parametrize("machine, want", [("x86_64", "x64"), ("aarch64", "arm64"), ("amd64", "x64")])
def test_the_host_architecture_names_the_build(machine, want):
    assert node.arch(machine) == want


def test_an_architecture_without_official_builds_says_use_the_distro():
    with pytest.raises(ValueError, match="not armv7l: set app.node to 'distro'"):
        node.arch("armv7l")


@pytest.mark.parametrize("package, want", [
    ("18.19.0+dfsg-6~deb12u2", "18.19.0"), ("18.19.1+dfsg-6ubuntu5", "18.19.1"), ("1:20.19.2+dfsg-1", "20.19.2"),
    ("12.22.9~dfsg-1ubuntu3.6", "12.22.9"), ("(none)", None), ("", None),
])
def test_the_distro_package_version_gives_the_node_version(package, want):
    assert node.distro_version(package) == want


@pytest.mark.parametrize("spec, want", [("24", "24.0.0"), ("24.22.3", "24.22.3"), ("distro", None)])
def test_the_lowest_version_a_spec_can_give(spec, want):
    assert node.lowest(spec) == want


@pytest.mark.parametrize("value", ["24", "26", "22", "24.22.3", "distro", 24])
def test_good_node_settings_are_taken(value):
    assert parse({"app": {"node": value}}).app.node == str(value)


@pytest.mark.parametrize("value", ["v24", "24.x", "lts", "latest", "24.1", ">=20", "0", "24.22.3-rc.1", "", True])
def test_bad_node_settings_are_refused_naming_host_field_and_value(value):
    with pytest.raises(SettingsError, match=rf"host web-1: app\.node = {value!r:.4}"):
        parse({"app": {"node": value}}, "web-1")


def test_the_default_is_an_lts_line_and_the_mirror_the_node_project_s():
    app = parse({}).app
    assert node.is_line(app.node) and app.node_mirror is None and node.OFFICIAL_MIRROR.startswith("https://")


@pytest.mark.parametrize("value, want", [("https://mirror.example.com/node/", "https://mirror.example.com/node"),
                                         ("http://198.18.0.1:8780", "http://198.18.0.1:8780")])
def test_a_mirror_is_an_http_url(value, want):
    assert parse({"app": {"node_mirror": value}}).app.node_mirror == want


@pytest.mark.parametrize("value", ["ftp://x", "mirror.example.com", "https://x/ y", "https://x/$(id)"])
def test_a_bad_mirror_is_refused(value):
    with pytest.raises(SettingsError, match=r"host web-1: app\.node_mirror"):
        parse({"app": {"node_mirror": value}}, "web-1")


def test_a_release_names_its_official_node_so_a_new_node_is_a_new_release():
    assert release_name("0123456789abcdef", None) == "0123456789abcdef"  # the distro's: as before
    assert release_name("0123456789abcdef", "24.22.3") == "0123456789abcdef-node24.22.3"
    assert content_of("0123456789abcdef-node24.22.3") == content_of("0123456789abcdef") == "0123456789abcdef"


# -- engines -------------------------------------------------------------------------------------------------

def app_dir(tmp_path, package: dict | str | None, standalone: bool = False):
    if package is not None:
        path = tmp_path / (".next/standalone/package.json" if standalone else "package.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(package if isinstance(package, str) else json.dumps(package))
    return str(tmp_path)


@pytest.mark.parametrize("wanted, version, ok", [
    (">=20.9.0", "24.22.3", True), (">=20.9.0", "18.20.4", False), (">=20.9.0", "20.9.0", True),
    ("^18.18.0 || ^19.8.0 || >= 20.0.0", "18.19.0", True),   # Next.js 15's own range
    ("^18.18.0 || ^19.8.0 || >= 20.0.0", "19.1.0", False),
    ("20.x || 22.x", "22.23.5", True), ("20.x || 22.x", "24.22.3", False),
    (">=18 <24", "24.0.0", False), ("~24.22", "24.22.3", True), ("24.0.0 - 24.22.1", "24.22.3", False),
    ("*", "12.22.9", True), (">= 26", "24.0.0", False),
])
def test_engines_are_judged_as_npm_judges_them(wanted, version, ok):
    assert engines.satisfies(version, wanted) is ok


def test_the_project_package_json_is_read_and_a_standalone_build_s_otherwise(tmp_path):
    found = engines.declared(app_dir(tmp_path, {"engines": {"node": ">=20.9.0"}}))
    assert (found.range, found.path) == (">=20.9.0", tmp_path / "package.json")
    other = tmp_path / "other"
    found = engines.declared(app_dir(other, {"engines": {"node": ">=22"}}, standalone=True))
    assert found.range == ">=22" and found.path.parts[-3:] == (".next", "standalone", "package.json")


@pytest.mark.parametrize("package", [None, {"name": "x"}, {"engines": {"npm": ">=10"}}])
def test_an_app_without_engines_node_declares_nothing(tmp_path, package):
    found = engines.declared(app_dir(tmp_path, package))
    assert found.range is None and (found.path is None) == (package is None)


@pytest.mark.parametrize("package, says", [("{not json", "is not a JSON object"), ("[1]", "is not a JSON object"),
                                           ({"engines": {"node": "newest"}}, "'newest' is not an npm version range"),
                                           ({"engines": {"node": 20}}, "20 is not an npm version range")])
def test_an_unreadable_package_json_is_an_error_naming_the_file(tmp_path, package, says):
    with pytest.raises(ValueError, match=says):
        engines.declared(app_dir(tmp_path, package))


def test_the_refusal_names_host_app_range_node_and_the_setting(tmp_path):
    found = engines.declared(app_dir(tmp_path, {"engines": {"node": ">=20.9.0"}}))
    text = engines.refusal("web-1", "shop", found, "18.19.0", "app.node = 'distro': the distro's nodejs package")
    for part in ("host web-1", "app shop", "'>=20.9.0'", "Node.js 18.19.0", "app.node = 'distro'", "set app.node"):
        assert part in text
    assert engines.refusal("web-1", "shop", found, "24.22.3", "app.node = '24'") is None
    assert engines.refusal("web-1", "shop", engines.Declared(None, None), "12.0.0", "x") is None
