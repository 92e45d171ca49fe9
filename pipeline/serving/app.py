"""The web server: a page to drop images on and see their nuclei, and a JSON API.

    ./run.sh serve [--model models/default] [--host 127.0.0.1] [--port 8000]

FastAPI (on uvicorn) was chosen over Flask for its typed request handling, the API's
OpenAPI description at ``/docs`` without extra code, and an async server that keeps
answering ``/api/health`` while images are predicted: the network runs on one worker
thread, so requests queue for the CPU instead of multiplying the work (and the memory),
and a bounded queue answers 503 when it is full.

- ``GET /``: the page (`pipeline/serving/templates/index.html`).
- ``POST /api/segment``: a multipart form with the image as ``image`` and, optionally,
  settings (``threshold``, ``min_size``, ``tta``, ``method``, ``marker_threshold``);
  answers the count, the settings used and one record per nucleus (measurements and
  run-length encoding). ``?include=files`` adds the pictures and downloads of the page.
- ``GET /api/health`` and ``GET /api/model`` (name, config, validation score, commit).

Bad requests get a 4xx answer ``{"error": "..."}`` naming the problem; nothing is written
to disk (uploads are held in memory up to the size limit).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from pipeline.core.model_store import SCORES_FILE, read_json
from pipeline.serving.segmenter import (
    MAX_MEGAPIXELS,
    PAGE_SETTINGS,
    Segmenter,
    UploadError,
    check_upload,
    parse_settings,
)

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # a 50-megapixel 16-bit RGB TIFF is 300 MB
MAX_QUEUE = 32  # requests waiting for the network before the server answers 503
# Uploads stay in memory up to the size limit: nothing is spooled to a temporary file.
MultiPartParser.spool_max_size = MAX_UPLOAD_BYTES


def model_info(segmenter: Segmenter) -> dict[str, Any]:
    """What ``/api/model`` answers: the model's name, config, scores and commit."""
    scores = read_json(segmenter.model.folder / SCORES_FILE)
    return {
        "name": segmenter.model.folder.name,
        "config": segmenter.model.config.to_dict(),
        "validation_score": scores.get("tuned_validation_score", scores.get("validation_score")),
        "stage1_test_score": scores.get("stage1_test_score"),
        "commit": scores.get("commit"),
        "settings": segmenter.defaults(),
    }


async def _read_request(request: Request) -> tuple[bytes, str, dict[str, str]]:
    """The uploaded file's bytes and name, and the other form fields."""
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > MAX_UPLOAD_BYTES:
        raise UploadError(f"upload of {int(size)} bytes is over {MAX_UPLOAD_BYTES}", 413)
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise UploadError("no image in the request: send it as the multipart field 'image'")
    try:
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
    except Exception as error:  # noqa: BLE001 - a malformed body is the client's fault
        raise UploadError(f"the request's form cannot be read ({error})") from error
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise UploadError("no image in the request: send it as the multipart field 'image'")
    fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
    return await upload.read(), upload.filename or "upload", fields


def create_app(
    segmenter: Segmenter, max_megapixels: float = MAX_MEGAPIXELS, max_queue: int = MAX_QUEUE
) -> FastAPI:
    """The application around one loaded model."""
    app = FastAPI(title="DSB2018 nuclei", description=__doc__.split("\n\n")[0])
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment")
    waiting = {"requests": 0}
    info = model_info(segmenter)
    pages = Environment(
        loader=PackageLoader("pipeline.serving", "templates"), autoescape=select_autoescape()
    )

    @app.exception_handler(UploadError)
    async def refused(_request: Request, error: UploadError) -> JSONResponse:
        log.info("refused (%d): %s", error.status, error)
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        settings = {key: info["settings"][key] for key in PAGE_SETTINGS}
        return pages.get_template("index.html").render(model=info, settings=settings)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": info["name"], "waiting": waiting["requests"]}

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return info

    @app.post("/api/segment")
    async def segment(request: Request, include: str = "") -> JSONResponse:
        data, name, fields = await _read_request(request)
        settings = parse_settings(fields)
        check_upload(data, name, max_megapixels)
        if waiting["requests"] >= max_queue:
            raise UploadError(f"busy: {max_queue} images are waiting; try again soon", 503)
        waiting["requests"] += 1
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(worker, segmenter.segment, data, name, settings)
        finally:
            waiting["requests"] -= 1
        body = result.summary()
        if "files" in include.split(","):
            body["files"] = result.files()
        log.info("%s: %d nuclei in %.2f s", name, body["count"], result.seconds)
        return JSONResponse(body)

    return app
