"""The HTTP routes of ``polymodal serve``: parse a request, call the :class:`~polymodal.serve.service.Service`,
shape the JSON. Every POST takes ``multipart/form-data`` (``curl -F``), so one request can carry text, an image
or both; an image is given as an uploaded file (``image``) or as the key of an indexed item (``key``).

    GET  /                 the web page (static/: search, image drop zone, VQA, caption, zero-shot)
    POST /search           text=... | image=@file | key=...   [k]      -> ranked keys, titles, scores, thumbnails
    POST /vqa              question=... + image | key          [k]      -> answers with probabilities
    POST /caption          image | key                                  -> a caption
    POST /zero-shot        labels=a,b,c + image | key  [templates, k]   -> labels with probabilities
    POST /index/add        images=@file (repeatable)  (API key)         -> the new keys (saved before the reply)
    GET  /thumbnail?key=K  a JPEG of an indexed image
    GET  /healthz          status, index size, which tasks are configured
    GET  /metrics          Prometheus text
    GET  /docs, /openapi.json

No ``from __future__ import annotations`` here: FastAPI reads the route signatures' annotations as objects, and
some of them are built from the settings inside :func:`create_app`.
"""
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from polymodal import __version__
from polymodal.index import SearchHit
from polymodal.serve.auth import WriteKeyGuard
from polymodal.serve.errors import ServiceError, install_error_handlers
from polymodal.serve.metrics import CONTENT_TYPE, MetricsMiddleware
from polymodal.serve.service import Service, Upload
from polymodal.serve.settings import ServeSettings
from polymodal.serve.uploads import BodySizeLimit, decode_image, read_upload
from polymodal.tasks.prompt_templates import TEMPLATE_SETS

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
WRITE_PATHS = frozenset({"/index/add"})
MAX_TEXT, MAX_QUESTION, MAX_LABELS, MAX_LABEL = 1000, 300, 100, 100
# The page loads its own script, style and thumbnails only; nothing inline, nothing from elsewhere.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

ImageFile = Annotated[UploadFile | None, File(description="an image file (PNG, JPEG, GIF or WebP)")]
IndexedKey = Annotated[str | None, Form(description="the key of an indexed image, instead of a file")]

DESCRIPTION = """Search, visual question answering, captions and zero-shot labels over HTTP, for the models and
index `polymodal serve` was started with. Every POST takes multipart/form-data; an image is an uploaded file
(`image`) or the key of an indexed item (`key`). Errors are `{"error": CODE, "detail": MESSAGE}` with a 4xx
status (503 when a model is not configured or its queue is full)."""


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving ``settings``; the models and index are loaded here, once, so a bad checkpoint or
    index fails before anything listens."""
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="polymodal", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app)
    # Added innermost first: metrics see every response, the key is checked before the body is read.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes,
                       per_path={path: settings.max_add_bytes for path in WRITE_PATHS})
    if settings.api_key is not None:
        app.add_middleware(WriteKeyGuard, key=settings.api_key, paths=WRITE_PATHS)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _add_routes(app, service, settings)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _query_image(service: Service, settings: ServeSettings, image: UploadFile | None,
                       key: str | None) -> Image.Image:
    """The image a request is about: an upload (checked, decoded off the event loop) or an indexed key."""
    if (image is None) == (key is None):
        raise ServiceError(400, "bad_request", "give the image as an uploaded file `image` or as an indexed `key` "
                                               "(one of them)")
    if key is not None:
        return await service.image_of(key)
    data = await read_upload(image, settings.limits, "image")
    return await asyncio.to_thread(decode_image, data, settings.limits, "image")


def _text(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise ServiceError(400, "bad_request", f"{field} is empty")
    if len(value) > limit:
        raise ServiceError(400, "bad_request", f"{field} has {len(value)} characters; at most {limit}")
    return value


def _thumbnail_url(request: Request, key: str) -> str:
    return f"{request.scope.get('root_path', '')}/thumbnail?key={quote(key, safe='')}"


def _hits(request: Request, service: Service, hits: list[SearchHit]) -> list[dict[str, Any]]:
    return [{"rank": rank, "key": hit.key, "title": service.images.title(hit.key), "score": round(hit.score, 6),
             "thumbnail": _thumbnail_url(request, hit.key)}
            for rank, hit in enumerate(hits, start=1)]


def _ranked(pairs: list[tuple[str, float]], name: str) -> list[dict[str, Any]]:
    return [{"rank": rank, name: value, "probability": round(probability, 6)}
            for rank, (value, probability) in enumerate(pairs, start=1)]


def _add_routes(app: FastAPI, service: Service, settings: ServeSettings) -> None:
    limits = settings.limits

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", summary="Liveness, index size and configured tasks")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "index_size": len(service.index), "tasks": service.tasks,
                "write_requires_key": settings.api_key is not None,
                "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                           "max_images_per_add": settings.max_images_per_add, "max_k": settings.max_k}}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/search", summary="Text → images or image → images")
    async def search(request: Request,
                     text: Annotated[str | None, Form(description="a text query")] = None,
                     image: ImageFile = None, key: IndexedKey = None,
                     k: Annotated[int, Form(ge=1, le=settings.max_k)] = 12) -> dict[str, Any]:
        if text is not None and (image is not None or key is not None):
            raise ServiceError(400, "bad_request", "give a text query or an image, not both")
        if text is not None:
            text = _text(text, "text", MAX_TEXT)
            hits = await service.search_text(text, k)
            query: dict[str, Any] = {"text": text}
        else:
            hits = await service.search_image(await _query_image(service, settings, image, key), k)
            query = {"key": key} if key is not None else {"image": image.filename or "upload"}
        return {"query": query, "k": k, "index_size": len(service.index), "results": _hits(request, service, hits)}

    @app.post("/vqa", summary="Answer a question about an image")
    async def vqa(question: Annotated[str, Form(description="the question")],
                  image: ImageFile = None, key: IndexedKey = None,
                  k: Annotated[int, Form(ge=1, le=50)] = 5) -> dict[str, Any]:
        question = _text(question, "question", MAX_QUESTION)
        service.require_task("vqa")
        answers = await service.answer(await _query_image(service, settings, image, key), question, k)
        return {"question": question, "answers": _ranked(answers, "answer")}

    @app.post("/caption", summary="Describe an image")
    async def caption(image: ImageFile = None, key: IndexedKey = None) -> dict[str, Any]:
        service.require_task("caption")
        return {"caption": await service.caption(await _query_image(service, settings, image, key))}

    @app.post("/zero-shot", summary="Which of the given labels fits an image best")
    async def zero_shot(labels: Annotated[str, Form(description="labels separated by commas or new lines")],
                        image: ImageFile = None, key: IndexedKey = None,
                        templates: Annotated[str, Form(description=f"prompt set: {', '.join(TEMPLATE_SETS)}")] =
                        "default",
                        k: Annotated[int, Form(ge=1, le=MAX_LABELS)] = 5) -> dict[str, Any]:
        names = [name.strip() for line in labels.splitlines() for name in line.split(",") if name.strip()]
        if len(names) < 2:
            raise ServiceError(400, "bad_request", "labels: give at least two labels, separated by commas")
        if len(names) > MAX_LABELS or max(len(name) for name in names) > MAX_LABEL:
            raise ServiceError(400, "bad_request", f"labels: at most {MAX_LABELS} labels of {MAX_LABEL} characters")
        if len(set(names)) != len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            raise ServiceError(400, "bad_request", f"labels: {duplicate!r} is given twice")
        if templates not in TEMPLATE_SETS:
            raise ServiceError(400, "bad_request", f"templates: unknown set {templates!r}; one of "
                                                   f"{', '.join(TEMPLATE_SETS)}")
        image_value = await _query_image(service, settings, image, key)
        scores = await service.zero_shot(image_value, names, templates, k)
        return {"labels": _ranked(scores, "label"), "templates": templates}

    @app.post("/index/add", summary="Embed uploaded images and add them to the index (saved before the reply)")
    async def index_add(request: Request,
                        images: Annotated[list[UploadFile], File(description="one or more image files")]
                        ) -> dict[str, Any]:
        if len(images) > settings.max_images_per_add:
            raise ServiceError(413, "too_many_files", f"images: {len(images)} files; at most "
                                                      f"{settings.max_images_per_add} per request")
        uploads = []
        for number, upload in enumerate(images, start=1):
            name = f"images[{number}]"
            data = await read_upload(upload, limits, name)
            decoded = await asyncio.to_thread(decode_image, data, limits, name)
            uploads.append(Upload(decoded, service.uploads.digest(data), upload.filename))
        keys = await service.add(uploads)
        return {"added": [{"key": key, "thumbnail": _thumbnail_url(request, key)} for key in keys],
                "index_size": len(service.index)}

    @app.get("/thumbnail", summary="A JPEG of an indexed image", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(key: str) -> Response:
        return Response(await service.thumbnail(key), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})
