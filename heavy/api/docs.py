"""The API's docs page, /docs (Swagger UI), with nothing loaded from off the machine.

FastAPI's own page loads its JS and CSS from a CDN (and a favicon from its site): with no internet, the README's
"OpenAPI at /docs" was a blank page. The assets come from the pinned fastapi-offline package (Swagger UI 5, which
reads the OpenAPI 3.1 FastAPI writes), mounted at DOCS_ASSETS, and the page is FastAPI's documented self-hosting
pattern: get_swagger_ui_html pointed at them. No /redoc: ReDoc's page shows its maker's logo from their CDN, whatever
it is served from.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs-assets"
_ASSETS_DIR = files("fastapi_offline") / "static"


def install_docs(app: FastAPI) -> None:
    """/docs and its assets; the app is made with docs_url=None and redoc_url=None."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(_ASSETS_DIR)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        # validatorUrl: Swagger UI would show a badge image from validator.swagger.io
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} API",
                                   swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})
