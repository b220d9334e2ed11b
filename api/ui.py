"""``/ui/``: the dashboard, served by the API itself: Jinja templates and static files in this package, no
front-end build step, nothing fetched from a CDN.

    browser ──GET /ui/<page>──> page(): a template with no data in it (open, like /healthz: it holds nothing)
       │ loads /ui/static/app.js, which renders the page and keeps it fresh
       └──fetch /v1/... with Authorization: Bearer <key>──> the JSON API, as any client: the same keys, the
          same owner rules, the same errors

    overview  /ui/        GET /v1/system every 2 s: queues, workers, jobs by status, the active model, its evaluation
    jobs      /ui/jobs    GET /v1/jobs every second: progress, ETA, a pipeline's stages, errors; POST /v1/pipelines,
                          DELETE /v1/jobs/<id> (cancel)
    models    /ui/models  GET /v1/models: versions, metrics, evaluation tables; POST /v1/models/<v>/activate
                          (activating an older version is the rollback)
    try it    /ui/try     GET /v1/movies?q= as a title is typed; POST /v1/recommendations for a user, keywords or
                          liked/disliked movies, each answer with its descriptors and why
    map       /ui/map     GET /v1/models/<active>/map: the movies in 2-D, coloured by main genre, the last answer's
                          movies ringed
    experiments /ui/experiments
                          GET /v1/experiments every 2 s: each one's state, variants (models), leader and whether
                          it leads significantly
    experiment  /ui/experiments/<name>
                          GET /v1/experiments/<name> every 2 s: per-variant rates with their intervals, each against
                          the first, or an interleaving's wins; the cumulative series drawn as inline SVG;
                          POST .../pause|resume|end|promote (offered to an admin's key only)

With ``MOVIEREC_API_KEYS`` set, the first 401 makes the page ask for a key; it is kept in the tab's
``sessionStorage`` (gone with the tab) and sent as a bearer token. Everything the page shows is put in with
``textContent`` or attributes, never as HTML, so a title like ``<img onerror=...>`` stays text; the content
security policy below refuses inline scripts and any other origin as a second line.

Which actions a page offers follows the key's role, which each API answer names in ``ROLE_HEADER``
(api/auth.py); a page hides what the role may not do, and the API still refuses it (403) whatever the page shows.
Without keys there is no role and no header: the API is open, and so is every action.
"""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Response, abort, render_template

PAGES = {
    "": "Overview",
    "jobs": "Jobs",
    "models": "Models",
    "try": "Try it",
    "map": "Map",
    "experiments": "Experiments",
}
"""Each page's path under /ui/ and its title, in the navigation's order."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

bp = APIBlueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
    enable_openapi=False,
)


@bp.after_request
def harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("/", defaults={"name": ""})
@bp.get("/<name>")
@bp.get("/experiments/<experiment>", defaults={"name": "experiments"})
def page(name: str, experiment: str | None = None) -> str:
    """A page's template (one experiment's under the Experiments tab: ``experiment`` names it)."""
    if name not in PAGES:
        abort(404)
    title = f"{experiment} · {PAGES[name]}" if experiment else PAGES[name]
    return render_template("ui/page.html", page="experiment" if experiment else name or "overview",
                           nav=name or "overview", title=title, pages=PAGES, experiment=experiment)  # fmt: skip
