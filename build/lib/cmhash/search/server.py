"""``cmhash serve``: the search API and its web page (FastAPI and uvicorn, installed with Prefect).

    GET  /                          the page (one file, no CDN: works offline)
    GET  /api/models                the indexes, with their mAP@all and mAP@50
    GET  /api/search?text=&method=&bits=&k=
    POST /api/search?method=&bits=&k=[&text=]   the body is the image file (fused methods: text too)
    GET  /api/items/{id}            an item's captions, labels and image path
    GET  /api/items/{id}/image      its thumbnail (JPEG)

Errors are JSON ``{"error": message}`` with a 4xx status. The models load once per process. (FastAPI
resolves the handlers' annotations at import, hence no ``from __future__ import annotations`` here.)
"""

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from cmhash.search.query import SearchError
from cmhash.search.service import MAX_UPLOAD_BYTES, SearchService

# The page loads nothing from elsewhere; the browser is told so, too.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
                           "script-src 'self' 'unsafe-inline'; connect-src 'self'")


def create_app(service: SearchService) -> FastAPI:
    app = FastAPI(title="cmhash search", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    page = resources.files("cmhash.search").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(SearchError)
    async def search_error(request: Request, error: SearchError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.get("/", response_class=HTMLResponse)
    async def index_page():
        return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/api/models")
    async def models() -> list[dict[str, Any]]:
        return service.available()

    @app.get("/api/search")
    async def search_text(method: str = "", bits: str = "", k: str = "10", text: str | None = None):
        if text is None:
            raise SearchError("give the query as ?text=... (or POST an image to /api/search).")
        return await run_in_threadpool(service.search, method, bits, k, text=text)

    @app.post("/api/search")
    async def search_image(request: Request, method: str = "", bits: str = "", k: str = "10", text: str | None = None):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise SearchError(f"the upload is {int(declared):,} bytes; images up to {MAX_UPLOAD_BYTES:,} bytes are accepted.", 413)
        body = bytearray()
        async for chunk in request.stream():  # stop reading past the limit, whatever the header said
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                raise SearchError(f"the upload is larger than {MAX_UPLOAD_BYTES:,} bytes, the limit for images.", 413)
        if not body:
            raise SearchError("the request has no image: send the image file as the body of the POST.")
        return await run_in_threadpool(service.search, method, bits, k, text=text, image=bytes(body))

    @app.get("/api/items/{item}")
    async def item(item: str):
        return service.item(item)

    @app.get("/api/items/{item}/image")
    async def item_image(item: str):
        return FileResponse(service.thumbnail(item), media_type="image/jpeg")

    return app


def serve(root: str | Path, params: dict[str, Any], host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    service = SearchService(root, params)
    print(f"cmhash search on http://{host}:{port}/ ({len(service.available())} indexes); Ctrl+C stops it")
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
