"""What a Next.js build (15 or 16) serves on the SSE paths, read from its manifests before a release leaves the
controller: a route prerendered at build time (a frozen response), a route on the Edge runtime, or no route at
all is refused, naming the SSE path, the route file and the fix.

The manifests and what they mean were read from Next.js's own source (15.5, 16.0, 16.4), see
tests/fixtures/nextbuild/README.md:
- `app-path-routes-manifest.json`: app entry (`/(group)/api/stream/route`) -> URL path (`/api/stream`);
- `server/pages-manifest.json`: Pages Router pages (`/api/...` are API routes);
- `routes-manifest.json`: `dynamicRoutes` regexes, in the order Next's router tries them; `basePath`;
- `server/middleware-manifest.json` `functions`: the entries that run on the Edge runtime (keyed by the app
  entry, or by the page for the Pages Router); Turbopack also marks them `app-edge-has-no-entrypoint` in
  `server/app-paths-manifest.json`;
- `prerender-manifest.json`: `routes` (URL -> `srcRoute`) and `dynamicRoutes` were rendered at build time and
  are served from that cache.
The exact-path set is built from the app routes and pages, as Next's router does (`routes-manifest.json`'s
`staticRoutes` leaves out /api routes in 15). Rewrites (next.config, middleware) are not followed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

INTERNAL_PAGES = {"/_app", "/_document", "/_error", "/404", "/500"}
INTERNAL_APP = {"/_not-found", "/_global-error"}
EXTENSIONS = ("tsx", "ts", "jsx", "js")  # Next's default pageExtensions
PROBE = "/__ssedeploy_probe__"  # a path below an SSE prefix: what a catch-all above it would serve
FIX_DYNAMIC = "export const dynamic = 'force-dynamic'"
FIX_NODEJS = "export const runtime = 'nodejs'"


@dataclass(frozen=True)
class Route:
    kind: str  # app-route, app-page, pages-api, pages-page
    key: str   # app entry (`/api/stream/route`) or page (`/api/stream`)


@dataclass
class Inspection:
    """What the build serves on the SSE paths: `refusals` stop a release, `notes` are said."""

    build: Path | None  # None: not a Next.js build (not inspected)
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except ValueError:
        raise ValueError(f"{path} is not JSON: is the build complete? Run `next build` again") from None


class Build:
    """One `next build` output (a project's `.next`)."""

    def __init__(self, project: Path):
        self.project, dist = project, project / ".next"
        self.dist = dist
        routes = _load(dist / "routes-manifest.json", {})
        self.base_path = routes.get("basePath") or ""
        config = _load(dist / "required-server-files.json", {}).get("config") or {}
        self.extensions = tuple(config.get("pageExtensions") or EXTENSIONS)
        self.cache_components = bool(config.get("cacheComponents") or (config.get("experimental") or {}).get("dynamicIO"))
        self.app_files = _load(dist / "server" / "app-paths-manifest.json", {})
        self.edge = set((_load(dist / "server" / "middleware-manifest.json", {}).get("functions") or {}))
        prerender = _load(dist / "prerender-manifest.json", {})
        self.prerendered = prerender.get("routes") or {}
        self.prerendered_dynamic = set(prerender.get("dynamicRoutes") or {})
        self.table: dict[str, Route] = {}
        for key, path in _load(dist / "app-path-routes-manifest.json", {}).items():
            if path in INTERNAL_APP:
                continue
            kind = "app-route" if key.endswith("/route") else "app-page"
            if path not in self.table or kind == "app-route":
                self.table[path] = Route(kind, key)
        for page in _load(dist / "server" / "pages-manifest.json", {}):
            if page not in INTERNAL_PAGES:
                self.table[page] = Route("pages-api" if re.match(r"^/api(/|$)", page) else "pages-page", page)
        self.dynamic = [(d["page"], re.compile(d["regex"])) for d in routes.get("dynamicRoutes") or []
                        if not d.get("skipInternalRouting") and d.get("page") in self.table]

    def resolve(self, url: str) -> str | None:
        """The route (its path pattern) Next's router gives URL, ignoring rewrites."""
        if self.base_path:
            if url != self.base_path and not url.startswith(self.base_path + "/"):
                return None
            url = url[len(self.base_path):]
        url = url.rstrip("/") or "/"
        if url in self.table:
            return url
        return next((page for page, regex in self.dynamic if regex.match(url)), None)

    def serving(self, prefix: str) -> list[str]:
        """Every route that answers under an SSE prefix (nginx's location is a string prefix)."""
        hits = {self.resolve(prefix), self.resolve(prefix.rstrip("/") + PROBE)} - {None}
        if prefix.startswith(self.base_path):  # routes' paths do not carry the base path
            hits |= {page for page in self.table if page.startswith(prefix[len(self.base_path):] or "/")}
        return sorted(hits)

    def source(self, page: str) -> str:
        """The route's file in the project, as the developer knows it (app/api/stream/route.ts)."""
        route = self.table[page]
        router, rel = ("app", route.key) if route.kind.startswith("app") else ("pages", page)
        for root in (router, f"src/{router}"):
            for ext in self.extensions:
                for candidate in (f"{root}{rel}.{ext}", f"{root}{rel}/index.{ext}"):
                    if (self.project / candidate).is_file():
                        return candidate
        return f"{router}{rel}.({'|'.join(self.extensions)})"

    def on_edge(self, page: str) -> bool:
        route = self.table[page]
        if route.kind.startswith("app"):
            return route.key in self.edge or self.app_files.get(route.key) == "app-edge-has-no-entrypoint"
        return page in self.edge

    def frozen(self, page: str) -> list[str]:
        """The URLs of this route rendered at build time (its pattern, for a dynamic route with a fallback)."""
        urls = [url for url, entry in self.prerendered.items() if url == page or entry.get("srcRoute") == page]
        return urls or ([page] if page in self.prerendered_dynamic else [])


def is_build(source: str) -> bool:
    project = Path(source)
    return (project / ".next" / "BUILD_ID").is_file() and (project / ".next" / "routes-manifest.json").is_file()


def inspect(source: str, sse_paths: list[str]) -> Inspection:
    """Judge a built app's SSE paths; an app that is not a Next.js build is not inspected."""
    if not is_build(source):
        return Inspection(None, notes=[f"{source} is not a Next.js build (no .next/BUILD_ID): its routes were not "
                                       "inspected"])
    build = Build(Path(source))
    found = Inspection(build.dist)
    for i, prefix in enumerate(sse_paths):
        where = f"site.sse_paths.{i} = {prefix!r}"
        pages = build.serving(prefix)
        handlers = [p for p in pages if build.table[p].kind in ("app-route", "pages-api")]
        if not handlers:
            served = f" (only by the page {build.source(pages[0])})" if pages else ""
            found.refusals.append(
                f"{where}: no route handler of the build serves it{served}: a typo in site.sse_paths, or a "
                f"missing route (add app{prefix}/route.js with a GET that streams)")
            continue
        for page in handlers:
            file = build.source(page)
            if build.on_edge(page):
                found.refusals.append(f"{where}: {file} runs on the Edge runtime, which buffers and cuts long "
                                      f"streams: add {FIX_NODEJS} to it")
            frozen = build.frozen(page)
            if frozen:
                fix = ("await connection() (from next/server) before reading the request, since cacheComponents "
                       "is on" if build.cache_components else f"add {FIX_DYNAMIC} to it")
                found.refusals.append(f"{where}: {file} was prerendered at build time ({', '.join(sorted(frozen))}): "
                                      f"every client would get that frozen response, not a stream: {fix}")
            if build.table[page].kind == "pages-api":
                found.notes.append(f"{where}: {file} is a Pages Router API route: allowed (nginx asks it for "
                                   "identity encoding, so its response is not compressed)")
    return found
