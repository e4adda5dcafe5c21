"""``cmhash serve``: the search API and its web page (FastAPI and uvicorn, installed with Prefect).

    GET  /                          the page (one file, no CDN: works offline)
    GET  /api/models                the indexes, with their mAP@all and mAP@k (evaluate.map_ks)
    GET  /api/search?method=&bits=&k=&text=
    POST /api/search?method=&bits=&k=[&text=]   the body is the image file (fused methods: text too)
    GET  /api/items/{id}            an item's captions, labels and image path
    GET  /api/items/{id}/image      its thumbnail (JPEG)
    GET  /api/openapi.json          the OpenAPI document: every status and media type these answer

Every error, from any route (an unknown one too), is JSON ``{"error": message}`` with a 4xx or 5xx
status; none is a traceback or plain text, not even those uvicorn itself answers (a request that is
not valid HTTP, too many connections: :mod:`cmhash.service.protocol`). Concurrent searches are
answered in batches (:mod:`cmhash.service.batching`); an uploaded image is decoded into the model's
input as soon as it arrives, in one thread of its own, the bytes of images held at once bounded
(:class:`~cmhash.service.search_service.ImageMemory`). The interactive API pages (Swagger UI) are
not served: they load their scripts from a CDN, so they would be blank offline; the OpenAPI
document is served instead.
(FastAPI resolves the handlers' annotations at import, hence no ``from __future__ import
annotations`` here.)
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cmhash.codes import MAX_BITS
from cmhash.search.query import SearchError
from cmhash.service.batching import Batcher
from cmhash.service.search_service import MAX_K, MAX_TEXT_CHARS, MAX_UPLOAD_BYTES, ImageMemory, SearchService, image_memory_limit
from cmhash.service.search_service import Request as SearchRequest

# The page loads nothing from elsewhere; the browser is told so, too.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
                           "script-src 'self' 'unsafe-inline'; connect-src 'self'")
# Connections (and requests in progress) uvicorn serves at once; beyond, a JSON 503 with Retry-After.
MAX_CONNECTIONS = 100


class ErrorBody(BaseModel):
    error: str


class Result(BaseModel):
    rank: int
    distance: int
    id: int
    captions: list[str]
    labels: list[str]
    image_path: str


class Answer(BaseModel):
    method: str
    bits: int
    direction: str
    text: str | None
    k: int
    results: list[Result]
    notes: list[str]
    batch: int
    milliseconds: dict[str, float]


class IndexEntry(BaseModel):
    method: str
    bits: int
    fused: bool | None = None
    items: int | None = None
    error: str | None = None
    map: dict[str, dict[str, float | None]]


class Item(BaseModel):
    id: int
    captions: list[str]
    labels: list[str]
    image_path: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {400: "The request cannot be served as it is (the message says why)", 404: "No such index, item or route",
               405: "Method not allowed on this route", 409: "The index was built with another encoder",
               413: "The image or the text is too large", 415: "The body is not an image",
               422: "A parameter is missing or invalid", 500: "An internal error",
               503: "The index or the catalog is damaged (rebuild it), or, with a Retry-After header, being rebuilt or the "
                    "server is busy: retry then"}
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


_COMMON = (404, 405, 422, 500, 503)
_SEARCH = (400, 404, 405, 409, 413, 415, 422, 500, 503)
_IMAGE_BODY = {"requestBody": {"required": True, "description": f"the image file, at most {MAX_UPLOAD_BYTES:,} bytes",
                               "content": {media: {"schema": {"type": "string", "format": "binary", "minLength": 1,
                                                              "maxLength": MAX_UPLOAD_BYTES}}
                                           for media in ("application/octet-stream", "image/jpeg", "image/png", "image/webp")}}}


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(service: SearchService) -> FastAPI:
    app = FastAPI(title="cmhash search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    page = resources.files("cmhash.service").joinpath("page.html").read_text(encoding="utf-8")
    batcher = Batcher(service)
    memory = ImageMemory(image_memory_limit(service.max_pixels))
    # uploads are decoded in one thread: each thread's malloc arena keeps what it once held
    decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cmhash-image-decode")

    @app.exception_handler(SearchError)
    async def search_error(request: Request, error: SearchError):
        return _error(str(error), error.status, {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        def say(problem) -> str:
            where = ".".join(str(part) for part in problem["loc"][1:]) or "request"
            if problem["type"] == "string_pattern_mismatch" and where == "text":
                return "text: the query text is empty or blank; type what to search for"
            return f"{where}: {problem['msg']}"

        problems = [say(problem) for problem in error.errors()[:5]]
        return _error("; ".join(problems), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = {404: f"no such route: {request.url.path[:100]}; the API is under /api/ (see /api/openapi.json)",
                   405: f"{request.method} is not allowed on {request.url.path[:100]}"}.get(error.status_code, str(error.detail))
        headers = getattr(error, "headers", None)
        if error.status_code == 405:  # every method of the path (GET and POST for /api/search), not one route's
            allowed = {method for route in app.router.routes if route.matches(request.scope)[0] != Match.NONE
                       for method in getattr(route, "methods", None) or ()}
            headers = {"Allow": ", ".join(sorted(allowed))}
        return _error(message, error.status_code, headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        return _error(f"internal error ({type(error).__name__}); the server's log has the details", 500)

    @app.get("/", response_class=HTMLResponse, responses=_errors(405, 500))
    async def index_page():
        return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/api/models", response_model=list[IndexEntry], responses=_errors(405, 500))
    async def models():
        return service.available()

    @app.get("/api/search", response_model=Answer, responses=_errors(*_SEARCH))
    async def search_text(method: str = Query(..., max_length=100), bits: int = Query(..., ge=1, le=MAX_BITS),
                          k: int = Query(10, ge=1, le=MAX_K), text: str = Query(..., max_length=MAX_TEXT_CHARS, pattern=r"\S")):
        return await batcher.search(SearchRequest(method, bits, k, text=text))

    @app.post("/api/search", response_model=Answer, responses=_errors(*_SEARCH), openapi_extra=_IMAGE_BODY)
    async def search_image(request: Request, method: str = Query(..., max_length=100), bits: int = Query(..., ge=1, le=MAX_BITS),
                           k: int = Query(10, ge=1, le=MAX_K),
                           text: str | None = Query(None, max_length=MAX_TEXT_CHARS, pattern=r"\S")):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise SearchError(f"the upload is {int(declared):,} bytes; images up to {MAX_UPLOAD_BYTES:,} bytes are accepted.", 413)
        body, held = bytearray(), 0
        try:
            async for chunk in request.stream():  # stop reading past the limit, whatever the header said
                memory.reserve(len(chunk))
                held += len(chunk)
                body += chunk
                if len(body) > MAX_UPLOAD_BYTES:
                    raise SearchError(f"the upload is larger than {MAX_UPLOAD_BYTES:,} bytes, the limit for images.", 413)
            if not body:
                raise SearchError("the request has no image: send the image file as the body of the POST.")
            service.require_index(method, bits)  # an unknown index is a 404 before the upload is decoded
            # decoded into the model's input now, not in the batch: only that small input waits
            picture = await asyncio.get_running_loop().run_in_executor(decoder, service.prepare_image, body, "the upload", memory)
        finally:
            memory.release(held)
            del body
        with memory.holding(picture.nbytes):
            return await batcher.search(SearchRequest(method, bits, k, text=text, picture=picture), picture.nbytes)

    @app.get("/api/items/{item}", response_model=Item, responses=_errors(*_COMMON))
    async def item(item: int = PathParameter(..., ge=0)):
        return service.item(item)

    @app.get("/api/items/{item}/image", response_class=Response, responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "The thumbnail"},
        **_errors(*_COMMON)})
    async def item_image(item: int = PathParameter(..., ge=0)):
        return Response(service.thumbnail(item), media_type="image/jpeg")

    return app


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    print(f"cmhash search on http://{host}:{port}/ ({len(service.available())} indexes); Ctrl+C stops it")
    uvicorn.Server(server_config(create_app(service), host, port)).run()


def server_config(app, host: str, port: int, limit_concurrency: int = MAX_CONNECTIONS):
    """uvicorn's settings for the app: its h11 protocol with JSON errors (:mod:`cmhash.service.protocol`,
    chosen explicitly: with httptools installed, "auto" would pick another), at most
    ``limit_concurrency`` connections or requests in progress at once."""
    import uvicorn

    from cmhash.service.protocol import JsonErrorsH11Protocol

    return uvicorn.Config(app, host=host, port=port, log_level="warning", http=JsonErrorsH11Protocol,
                          limit_concurrency=limit_concurrency)
