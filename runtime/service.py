"""A small HTTP service for line integration: POST an image, get the verdict and defects as JSON.

    edgestack serve --bundle artifacts/defectseg-s --port 8000 [--token-file secret.txt] [--out runs/service]
    curl --data-binary @part.png -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:8000/v1/inspect?id=part-7"

Binds to loopback unless told otherwise. Request bodies and image dimensions are limited (the image
header is read before any pixel is decoded, so decompression bombs are refused cheaply). One engine
serves every request; inference runs in worker threads behind the inspector's lock. At most `max_pending`
requests are in progress (read, queued or running): beyond that a request gets 503 with Retry-After at once,
so a burst cannot push every verdict past the line's deadline. Of those, IMAGES_AT_ONCE are decoded and
inspected at a time (each takes tens of bytes per pixel while it is), the others wait as their encoded bodies:
memory stays near max_pending * max_bytes + IMAGES_AT_ONCE images of max_pixels. With a run folder,
every authorised request's result (ERROR for a refused image) is in results.jsonl, fsync'd before the
response is sent, as for `edgestack inspect`; the summary is written when the service stops. There a part id
is judged once: an id that has a verdict gets 409 with the recorded result, so a retry learns the verdict and a
second camera's frame is not judged under the first one's name; one sent while that id is being judged waits
for that request (a PLC that timed out and sent again) and then gets its verdict, or is judged if it got none.
On stop (SIGTERM, Ctrl-C) the images being inspected finish; those still waiting get 503 at once.
"""

import asyncio
import errno
import hmac
import io
import itertools
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgestack.bundle import write_atomic
from edgestack.errors import EdgestackError, EngineOutputError
from edgestack.runtime.images import decode_image
from edgestack.runtime.inspect import SUMMARY_EVERY_S, Inspector, RunWriter, error_result

log = logging.getLogger(__name__)
MAX_ID_LENGTH = 200
IMAGES_AT_ONCE = 2  # one in the engine (behind the inspector's lock), one being prepared or recorded


class Metrics:
    """Counters for /metrics in the Prometheus text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.inference_seconds = 0.0
        self.inferences = 0
        self.started = time.time()

    def count(self, outcome: str, seconds: float | None = None) -> None:
        with self.lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1
            if seconds is not None:
                self.inference_seconds += seconds
                self.inferences += 1

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE edgestack_requests_total counter"]
            lines += [f'edgestack_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())]
            lines += [
                "# TYPE edgestack_inference_seconds summary",
                f"edgestack_inference_seconds_sum {self.inference_seconds:.6f}",
                f"edgestack_inference_seconds_count {self.inferences}",
                "# TYPE edgestack_uptime_seconds gauge",
                f"edgestack_uptime_seconds {time.time() - self.started:.1f}",
            ]
        return "\n".join(lines) + "\n"


def decode_upload(data: bytes, max_pixels: int, gray_to_rgb: bool = False, bit_depth: int | None = None) -> np.ndarray:
    """RGB uint8 array from encoded bytes, read as `edgestack inspect` reads a file (gray only with gray_to_rgb);
    dimensions are checked from the header before decoding."""
    from PIL import Image

    if not data:
        raise EdgestackError("empty request body; send the encoded image (PNG/JPEG/BMP/TIFF) as the body")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        raise EdgestackError(f"image dimensions exceed the limit of {max_pixels} pixels") from None
    except Exception:  # PIL raises many types for non-images
        raise EdgestackError("the body is not a readable image; send PNG/JPEG/BMP/TIFF bytes") from None
    if width * height > max_pixels:
        raise EdgestackError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return decode_image(data, "in the request body", gray_to_rgb, bit_depth)


def create_app(inspector: Inspector, token: str | None = None, max_bytes: int = 64 << 20,
               max_pixels: int = 64_000_000, run_dir: str | Path | None = None, overlay: str = "ng",
               max_pending: int = 32, summary_every_s: float = SUMMARY_EVERY_S, body_timeout_s: float = 30.0,
               stopping: Callable[[], bool] = lambda: False):
    """The FastAPI app; `stopping()` tells it the server is shutting down (serve() passes uvicorn's flag)."""
    # No `from __future__ import annotations` in this module: FastAPI reads the endpoint's annotations
    # (`request: Request`) at definition time, and Request is imported only here.
    try:
        from fastapi import FastAPI, Request
        from fastapi.concurrency import run_in_threadpool
        from fastapi.responses import JSONResponse, PlainTextResponse
        from starlette.requests import ClientDisconnect
    except ImportError:
        raise EdgestackError("the service needs FastAPI and uvicorn: pip install 'edgestack[serve]'") from None

    if min(max_pending, max_bytes, max_pixels) < 1:
        raise EdgestackError(f"max_pending, max_bytes and max_pixels must be at least 1, got {max_pending}, "
                             f"{max_bytes}, {max_pixels}")
    from PIL import Image

    # PIL refuses headers over 2x its own limit (about 179 M pixels) before ours is checked: let ours decide.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    def open_run() -> RunWriter | None:
        return RunWriter(Path(run_dir), overlay, inspector.setup(), summary_every_s) if run_dir else None

    writer = open_run()  # here, not at startup: a folder in use or of another setup is refused before serving
    write_lock = threading.Lock()
    # ids whose verdict is being made, each with the event its request sets when it ends: a retry under that id
    # waits for it (a PLC that timed out and sent again), then gets its verdict, or is judged when it got none
    judging: dict[str, asyncio.Event] = {}
    # Requests without ?id= get one that stays unique across restarts into the same run folder.
    session = datetime.now().strftime("%Y%m%d-%H%M%S.%f")
    numbers = itertools.count()

    @asynccontextmanager
    async def lifespan(app):
        nonlocal writer
        if writer and writer.finished:  # served again (an embedder restarting it): the run folder goes on
            writer = open_run()
        yield
        if writer:
            try:
                with write_lock:  # after the record being written, if a request was cut off mid-write
                    writer.finish()
            except EdgestackError as exc:  # results.jsonl holds every result; say why the rest is missing
                log.error("%s", exc)

    app = FastAPI(title="edgestack inspection", version="1", lifespan=lifespan)
    metrics = Metrics()
    meta = inspector.engine.meta
    pending = 0  # requests past authentication and not yet answered; only the event loop touches it
    unrecorded: str | None = None  # why the last verdict could not be recorded; None once one is again
    # One per event loop: an asyncio semaphore belongs to the loop it first waits in, and an app may be served by
    # more than one in turn (an embedder restarting it, test clients).
    semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def record(result: dict[str, Any], image: np.ndarray | None = None, prob: np.ndarray | None = None) -> None:
        if writer:
            with write_lock:
                writer.write(result, image, prob)

    def record_refusal(item_id: str, message: str) -> None:
        # Under the lock that writes verdicts: a retry refused while the first request's verdict is still being
        # written (overlay, fsync) must not land after it and replace it.
        with write_lock:
            if item_id not in writer.done:
                writer.write(error_result(item_id, message), None, None)

    async def reject(status: int, outcome: str, message: str, item_id: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.count(outcome)
        # Authorised: the refusal is that item's result, unless the item already has a verdict (a retry refused
        # as busy must not replace it).
        if item_id is not None and writer:
            try:
                await run_in_threadpool(record_refusal, item_id, message)
            except EdgestackError as exc:  # the client still hears why its image was refused
                log.error("%s", exc)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.get("/health")
    def health():
        # A service that cannot record answers every part 500: the line's monitoring must see that here too. It
        # looks again at each call (a probe file written and synced), as a probe in front takes the service out
        # of rotation and no verdict would come to clear it.
        nonlocal unrecorded
        if unrecorded is not None:
            probe = Path(run_dir) / ".health-probe"
            try:
                write_atomic(probe, b"ok")
                probe.unlink()
                unrecorded = None
            except OSError:
                pass
        if unrecorded is not None:
            return JSONResponse({"status": "cannot record verdicts", "error": unrecorded}, status_code=503)
        return {"status": "ok", "model": meta["model"]["config"], "backend": inspector.engine.description}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_text() -> str:
        gauge = f"# TYPE edgestack_requests_in_progress gauge\nedgestack_requests_in_progress {pending}\n"
        return metrics.text() + gauge

    @app.post("/v1/inspect")
    async def inspect(request: Request, id: str | None = None):
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return await reject(401, "unauthorized", "missing or wrong bearer token",
                                    headers={"WWW-Authenticate": "Bearer"})
        if id is not None and not (0 < len(id) <= MAX_ID_LENGTH and id.isprintable()):
            return await reject(400, "bad_request", f"id must be 1..{MAX_ID_LENGTH} printable characters (it names "
                                                    "the result and its overlay file)")
        item_id = id if id is not None else f"request-{session}-{next(numbers):06d}"
        if writer:
            while item_id in judging:
                await judging[item_id].wait()
            if item_id in writer.done:
                return already_judged(item_id)
        nonlocal pending
        if pending >= max_pending:
            return await reject(503, "busy", f"{pending} requests in progress (limit {max_pending}); retry shortly",
                                item_id, {"Retry-After": "1"})
        pending += 1
        if writer:
            judging[item_id] = asyncio.Event()
        try:
            return await inspect_body(request, item_id)
        finally:
            pending -= 1
            if writer:
                judging.pop(item_id).set()

    def already_judged(item_id: str) -> JSONResponse:
        metrics.count("duplicate_id")
        recorded = writer.summarised.get(item_id, {})
        message = (f"part {item_id} has a verdict already ({recorded.get('status')}): a part is judged once; "
                   "send a new image under its own id")
        return JSONResponse({"error": message, "recorded": recorded}, status_code=409)

    async def inspect_body(request: Request, item_id: str):
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            return await reject(415, "bad_request", "send the image file's bytes as the request body (curl "
                                "--data-binary @part.png), not a multipart form (curl -F)", item_id)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await reject(413, "too_large", f"body of {declared} bytes exceeds the limit of {max_bytes}",
                                item_id)
        async def read_body() -> bytearray | None:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    return None
            return body

        # A client that stalls mid-upload (a camera PC losing power) must not hold its slot for ever.
        try:
            body = await asyncio.wait_for(read_body(), body_timeout_s)
        except asyncio.TimeoutError:
            return await reject(408, "timeout", f"the body did not arrive within {body_timeout_s:g} s; send it again",
                                item_id)
        except ClientDisconnect:  # nobody to answer; the refusal is still that item's record
            return await reject(400, "disconnected", "the client disconnected before its image arrived", item_id)
        if body is None:
            return await reject(413, "too_large", f"body exceeds the limit of {max_bytes} bytes", item_id)
        images_at_once = semaphores.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(IMAGES_AT_ONCE))
        async with images_at_once:  # a decoded image and its maps are tens of bytes per pixel: a few at a time
            # What waited here may be stale: a stopping service answers at once (its grace would end before the
            # queue did), and a client that left is not worth an inspection the live requests wait behind.
            if stopping():
                return await reject(503, "stopping", "the service is stopping; send the image again once it is "
                                    "back", item_id, {"Retry-After": "5"})
            if await request.is_disconnected():
                return await reject(400, "disconnected", "the client disconnected before its image was inspected",
                                    item_id)
            return await inspect_image(request, bytes(body), item_id)

    async def inspect_image(request: Request, body: bytes, item_id: str):
        try:  # in a worker thread: a large PNG takes seconds to decode, which must not stall the other requests
            image = await run_in_threadpool(decode_upload, body, max_pixels, inspector.gray_to_rgb,
                                            inspector.bit_depth)
        except EdgestackError as exc:
            status = 413 if "limit" in str(exc) else 400
            return await reject(status, "too_large" if status == 413 else "bad_image", str(exc), item_id)
        started = time.perf_counter()
        try:
            result, prob = await run_in_threadpool(inspector.inspect, image, item_id)
        except EngineOutputError as exc:
            return await reject(500, "engine_error", str(exc), item_id)
        except EdgestackError as exc:
            return await reject(422, "bad_image", str(exc), item_id)
        except Exception as exc:  # the engine failing on this image: an answer and a record, not a bare 500
            log.exception("inspecting %s failed", item_id)
            return await reject(500, "engine_error", f"{exc.__class__.__name__}: {exc}", item_id)
        if await request.is_disconnected():  # nobody will hear the verdict: the line treats the part as uninspected
            return await reject(400, "disconnected", "the client disconnected before its verdict was sent", item_id)
        nonlocal unrecorded
        try:
            await run_in_threadpool(record, result, image, prob)  # on disk before the line hears the verdict
        except Exception as exc:  # no verdict the audit trail lacks: the line treats the part as uninspected
            if not isinstance(exc, EdgestackError):
                log.exception("recording %s failed", item_id)
            metrics.count("unrecorded")
            unrecorded = str(exc)
            return JSONResponse({"error": str(exc)}, status_code=500)
        unrecorded = None
        metrics.count(result["status"], time.perf_counter() - started)
        return result

    return app


def serve(inspector: Inspector, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_bytes: int = 64 << 20, max_pixels: int = 64_000_000, run_dir: str | Path | None = None,
          overlay: str = "ng", max_pending: int = 32, body_timeout_s: float = 30.0) -> None:
    import uvicorn

    server = None
    listeners = listening_sockets(host, port)  # before the run folder is taken: a port in use leaves it free
    try:
        app = create_app(inspector, token, max_bytes, max_pixels, run_dir, overlay, max_pending,
                         body_timeout_s=body_timeout_s, stopping=lambda: server is not None and server.should_exit)
        # SIGTERM: requests in progress get this long to finish (a stalled upload would otherwise hold the stop).
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=body_timeout_s))
        names = [listener.getsockname()[:2] for listener in listeners]  # --port 0: the port it was given
        where = ", ".join(f"http://[{ip}]:{bound}" if ":" in ip else f"http://{ip}:{bound}" for ip, bound in names)
        print(f"serving {inspector.engine.description} on {where}", file=sys.stderr)
        try:
            server.run(sockets=listeners)
        except SystemExit:  # uvicorn's answer to a failed start (logged above)
            if server.started:
                raise
        except KeyboardInterrupt:  # uvicorn raises the stop signal again once it has stopped: a clean stop, exit 0
            if not server.started:
                raise
    finally:
        for listener in listeners:
            listener.close()
    if not server.started:
        raise EdgestackError(f"the service on {host}:{port} did not start (see the log above)")


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The service's sockets, one per address `host` names (`localhost`: 127.0.0.1 and ::1 on most systems, as
    uvicorn itself binds), all on one port (`--port 0`: the one the first got), with TCP keep-alive, which their
    connections inherit: a client that lost power or its cable mid-connection never closes that connection, and
    without probes the service would hold each such one (a file descriptor) for ever; with them it goes after
    about 90 s of silence. An address this machine cannot take (::1 in a container without IPv6) is left out, as
    asyncio leaves it out; none at all is an error."""
    listeners: list[socket.socket] = []
    problem = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        infos, problem = [], exc
    for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
        if listeners:  # --port 0: the port the first socket was given
            address = (address[0], listeners[0].getsockname()[1], *address[2:])
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # EAFNOSUPPORT: a kernel without IPv6
            problem = exc
            continue
        try:
            if os.name != "nt":  # a restart must not wait for the old connections' TIME_WAIT
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # ::1 beside 127.0.0.1, not over it
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, option):  # Linux, and macOS from Python 3.10 on; elsewhere the system's timing
                    listener.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            listener.bind(address)
            listener.listen(2048)
            listeners.append(listener)
        except OSError as exc:
            listener.close()
            if exc.errno != errno.EADDRNOTAVAIL:  # a port in use on one address is in use: no half service
                for other in listeners:
                    other.close()
                listeners, problem = [], exc
                break
            problem = exc
    if not listeners:
        reason = ("in use by another program" if getattr(problem, "errno", None) == errno.EADDRINUSE else
                  getattr(problem, "strerror", None) or str(problem or "it names no address"))
        raise EdgestackError(f"could not listen on {host}:{port} ({reason}); choose another --port or --host")
    return listeners
