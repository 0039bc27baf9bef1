"""The build preflight on real `next build` outputs (tests/fixtures/nextbuild: one route per case, built with
Next.js 15 and 16 by build.sh there, manifests checked in) and on hand-made manifests for the routing rules."""

from __future__ import annotations

import json

import pytest

from ssedeploy.nextbuild import FIX_DYNAMIC, FIX_NODEJS, inspect

from ..nextbuilds import MAJORS, built_project


@pytest.fixture(params=MAJORS)
def project(request, tmp_path):
    return str(built_project(tmp_path, request.param))


def refusals(project, *paths):
    return inspect(project, list(paths)).refusals


def test_a_dynamic_node_route_is_taken(project):
    found = inspect(project, ["/api/live", "/api/grouped"])
    assert found.build is not None and found.refusals == [] and found.notes == []


def test_a_prerendered_route_is_refused_naming_path_file_and_fix(project):
    (text,) = refusals(project, "/api/live", "/api/frozen")
    assert text.startswith("site.sse_paths.1 = '/api/frozen': app/api/frozen/route.js was prerendered at build time")
    assert FIX_DYNAMIC in text


def test_a_route_whose_params_were_generated_at_build_time_is_refused(project):
    (text,) = refusals(project, "/api/feed")
    assert "app/api/feed/[topic]/route.js was prerendered at build time (/api/feed/news)" in text


def test_an_edge_route_is_refused_naming_path_file_and_fix(project):
    (text,) = refusals(project, "/api/edge")
    assert text.startswith("site.sse_paths.0 = '/api/edge': app/api/edge/route.js runs on the Edge runtime")
    assert FIX_NODEJS in text


@pytest.mark.parametrize("path, says", [("/api/nope", "no route handler of the build serves it: "),
                                        ("/docs", "(only by the page app/docs/page.js)")])
def test_a_path_no_route_handler_serves_is_refused(project, path, says):
    (text,) = refusals(project, path)
    assert text.startswith(f"site.sse_paths.0 = '{path}': no route handler") and says in text


def test_a_pages_api_route_is_allowed_with_a_note(project):
    found = inspect(project, ["/api/legacy"])
    assert found.refusals == [] and found.notes == [
        "site.sse_paths.0 = '/api/legacy': pages/api/legacy.js is a Pages Router API route: allowed (nginx asks it "
        "for identity encoding, so its response is not compressed)"]


def test_an_app_that_is_not_a_next_build_is_not_inspected_and_says_so(tmp_path):
    found = inspect(str(tmp_path), ["/api/stream"])
    assert found.build is None and found.refusals == [] and "not a Next.js build" in found.notes[0]


# -- routing rules, on hand-made manifests of the same shape ------------------------------------------------

def hand_made(tmp_path, routes: dict[str, str], dynamic: list[tuple[str, str]], base_path: str = "",
              edge: tuple[str, ...] = (), app_files: dict | None = None) -> str:
    dist = tmp_path / ".next"
    (dist / "server").mkdir(parents=True)
    (dist / "BUILD_ID").write_text("x")
    files = {
        "routes-manifest.json": {"basePath": base_path, "dynamicRoutes": [{"page": p, "regex": r} for p, r in dynamic]},
        "app-path-routes-manifest.json": routes,
        "prerender-manifest.json": {"routes": {}, "dynamicRoutes": {}},
        "server/app-paths-manifest.json": app_files or {},
        "server/middleware-manifest.json": {"functions": {key: {} for key in edge}},
        "server/pages-manifest.json": {"/_app": "pages/_app.js"},
    }
    for name, data in files.items():
        (dist / name).write_text(json.dumps(data))
    return str(tmp_path)


def test_a_catch_all_above_the_prefix_serves_it(tmp_path):
    project = hand_made(tmp_path, {"/api/[...slug]/route": "/api/[...slug]"}, [("/api/[...slug]", "^/api/(.+?)(?:/)?$")])
    assert refusals(project, "/api/stream") == []


def test_routes_under_the_prefix_count_and_a_base_path_is_part_of_the_url(tmp_path):
    project = hand_made(tmp_path, {"/api/stream/[topic]/route": "/api/stream/[topic]"},
                        [("/api/stream/[topic]", "^/api/stream/([^/]+?)(?:/)?$")], base_path="/shop")
    assert refusals(project, "/shop/api/stream") == []
    assert "no route handler" in refusals(project, "/api/stream")[0]


def test_turbopack_s_edge_marker_is_read_too(tmp_path):
    project = hand_made(tmp_path, {"/api/stream/route": "/api/stream"}, [],
                        app_files={"/api/stream/route": "app-edge-has-no-entrypoint"})
    assert "runs on the Edge runtime" in refusals(project, "/api/stream")[0]
