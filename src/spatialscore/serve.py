"""``spatialscore serve``: a SpatialScore export behind LitServe, with dynamic batching.

    spatialscore serve --model runs/spatialscore/export [--port 8000] [--max-batch-size 8] [--batch-timeout 0.01]

``POST /predict`` takes ``{"prompts": [str, ...], "images": [base64 PNG/JPEG/WebP, ...]}`` (the i-th prompt judges
the i-th image) and answers ``{"mu": [...], "sigma": [...], "log_sigma": [...], "batch_requests": n,
"batch_images": m}``: the scores of :meth:`SpatialScore.score` and how many requests and images the server scored
together with this one. LitServe coalesces up to ``--max-batch-size`` requests arriving within ``--batch-timeout``
seconds into one batch; ``GET /health`` answers 200 ``ok`` once every worker has loaded the model (503 before).

Requests are validated in the HTTP processes, before they can reach a batch (LitServe fails a whole batch when one
of its requests fails to decode): JSON of the wrong shape, more than ``--max-images`` images, prompts and images of
different counts, a prompt over :data:`~spatialscore.data.manifest.MAX_PROMPT_CHARS` characters, an image over
``--max-image-bytes`` encoded or ``--max-image-pixels`` decoded (checked from the header, before decoding), not
base64, not PNG/JPEG/WebP, undecodable, or of an aspect ratio Qwen2.5-VL refuses: each is a 422 naming the field
and index; a body over the sum of those limits is a 413. Images are decoded with
:func:`spatialscore.data.images.to_rgb`, the loader every other path uses.

The server binds 127.0.0.1 unless ``--host`` says otherwise. With the environment variable :data:`TOKEN_ENV` set,
every endpoint (``/health`` too) needs ``Authorization: Bearer <token>`` (401 otherwise); the token is never a
command-line argument, which other users of the machine could read. One inference worker per device
(``--accelerator``, ``--devices``): on CPU one worker.
"""

import base64
import binascii
import hashlib
import io
import math
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from spatialscore.cli import PositiveFloat, PositiveInt, UsageError, run_command
from spatialscore.data.images import aspect_ratio_problem, to_rgb
from spatialscore.data.manifest import MAX_PROMPT_CHARS

__all__ = ["TOKEN_ENV", "RequestLimits", "ScoreRequest", "SpatialScoreAPI", "cli_main", "decode_image", "serve"]

TOKEN_ENV = "SPATIALSCORE_SERVE_TOKEN"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
LOOPBACK = "127.0.0.1"
Host = Literal["127.0.0.1", "0.0.0.0", "::"]  # what LitServe 0.2 binds (LOOPBACK first)
HOSTS: tuple[str, ...] = get_args(Host)


@dataclass(frozen=True)
class RequestLimits:
    """What one ``/predict`` request may carry."""

    max_images: int = 64
    max_image_bytes: int = 8 << 20
    max_image_pixels: int = 4096 * 4096

    def max_body_bytes(self) -> int:
        """An upper bound of a valid request's JSON body (base64 images, prompts at 12 bytes a character)."""
        per_image = 4 * math.ceil(self.max_image_bytes / 3) + 12 * MAX_PROMPT_CHARS + 16
        return self.max_images * per_image + (64 << 10)


def decode_image(text: str, *, limits: RequestLimits) -> np.ndarray:
    """A base64 PNG/JPEG/WebP as an (H, W, 3) uint8 array; ValueError saying what is wrong.

    The pixel count is checked from the header before any pixel is decoded (no decompression bombs), and the
    image goes through :func:`~spatialscore.data.images.to_rgb` as files do (16-bit greyscale scaled).
    """
    if len(text) > 4 * math.ceil(limits.max_image_bytes / 3):
        raise ValueError(f"{len(text)} base64 characters, over the limit of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 (standard alphabet, padded)") from None
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"not a {', '.join(IMAGE_FORMATS)} image") from None
    with image:
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise ValueError(f"{width}x{height} = {width * height} pixels, over the limit of {limits.max_image_pixels}")
        problem = aspect_ratio_problem(width, height)
        if problem is not None:
            raise ValueError(problem)
        try:
            image.load()
        except Exception as error:  # Pillow raises OSError, SyntaxError, zlib/struct errors on broken data
            raise ValueError(f"cannot decode the image, the data is truncated or corrupt ({error})") from None
        return np.asarray(to_rgb(image))


class ScoreRequest(BaseModel):
    """The body of ``POST /predict``, validated and decoded in the HTTP process (a 422 on any problem).

    ``limits`` is set by :func:`serve` before the HTTP processes fork. The decoded images travel to the inference
    worker with the request (a private attribute: pydantic pickles it, and nothing else can set it).
    """

    model_config = ConfigDict(extra="forbid")
    limits: ClassVar[RequestLimits] = RequestLimits()

    prompts: list[str]
    images: list[str]
    _pixels: list[np.ndarray] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check_and_decode(self) -> "ScoreRequest":
        limits = type(self).limits
        if not self.images:
            raise ValueError("images is empty: send at least one image")
        if len(self.images) > limits.max_images:
            raise ValueError(f"{len(self.images)} images, over the limit of {limits.max_images} per request")
        if len(self.prompts) != len(self.images):
            raise ValueError(f"got {len(self.prompts)} prompts but {len(self.images)} images (one prompt per image)")
        for index, prompt in enumerate(self.prompts):
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"prompts[{index}] has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} (MAX_PROMPT_CHARS)"
                )
        pixels = []
        for index, text in enumerate(self.images):
            try:
                pixels.append(decode_image(text, limits=limits))
            except ValueError as error:
                raise ValueError(f"images[{index}]: {error}") from None
        self._pixels = pixels
        return self

    @property
    def pixels(self) -> list[np.ndarray]:
        """The decoded (H, W, 3) uint8 images."""
        return self._pixels


_bearer = HTTPBearer(auto_error=False)


class SpatialScoreAPI(ls.LitAPI):
    """A :meth:`SpatialScore.from_pretrained` folder served by LitServe; ``predict`` scores a batch of requests.

    ``token_sha256``: the SHA-256 of the bearer token every request must carry (None: no authentication); only
    the hash is kept. ``forward_batch``: images per forward pass (memory), whatever the number coalesced.
    """

    def __init__(
        self,
        *,
        model_dir: str,
        base_path: str | None = None,
        forward_batch: int = 32,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        token_sha256: str | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_dir = model_dir
        self.base_path = base_path
        self.forward_batch = forward_batch
        self.token_sha256 = token_sha256
        self.model: Any = None

    def setup(self, device: str) -> None:
        """Load the export on ``device`` (once per worker)."""
        from spatialscore.model import SpatialScore

        self.model = SpatialScore.from_pretrained(self.model_dir, base_path=self.base_path, device=device)

    def authorize(self, auth: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        """401 unless the request carries the bearer token (when one is configured)."""
        if self.token_sha256 is None:
            return
        given = hashlib.sha256(auth.credentials.encode()).hexdigest() if auth is not None else ""
        if auth is None or auth.scheme.lower() != "bearer" or not secrets.compare_digest(given, self.token_sha256):
            raise HTTPException(
                status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    def decode_request(self, request: ScoreRequest) -> tuple[list[str], list[np.ndarray]]:
        """The validated request's prompts and decoded images."""
        return request.prompts, request.pixels

    def predict(self, x: Any) -> Any:
        """Score every image of the coalesced requests in one call; a list of per-request results
        (one result when LitServe does not batch, ``max_batch_size`` 1)."""
        requests = x if self.max_batch_size > 1 else [x]
        prompts = [p for request_prompts, _ in requests for p in request_prompts]
        images = [i for _, request_images in requests for i in request_images]
        out = self.model.score(prompts=prompts, images=images, batch_size=self.forward_batch)
        mu, log_sigma, sigma = out.mu.tolist(), out.log_sigma.tolist(), out.sigma.tolist()
        results, start = [], 0
        for request_prompts, _ in requests:
            rows = slice(start, start + len(request_prompts))
            start = rows.stop
            results.append(
                {
                    "mu": mu[rows],
                    "sigma": sigma[rows],
                    "log_sigma": log_sigma[rows],
                    "batch_requests": len(requests),
                    "batch_images": len(images),
                }
            )
        return results if self.max_batch_size > 1 else results[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer (see the module docstring)."""
        return output


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """A 422 listing each problem's location and message, without echoing the request (its images)."""
    problems = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": problems})


def parse_devices(text: str) -> int | list[int] | str:
    """``--devices``: ``auto``, a count (the first N), or comma-separated indices (``0,2``; ``3,`` for index 3)."""
    if text == "auto":
        return text
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or ("," not in text and values[0] < 1):
        raise ValueError(f"must be 'auto', a count >= 1 or indices like 0,2 (3, for index 3); got {text!r}")
    return values if "," in text else values[0]


def serve(
    api: SpatialScoreAPI,
    *,
    limits: RequestLimits,
    host: str = LOOPBACK,
    port: int = 8000,
    accelerator: str = "auto",
    devices: int | list[int] | str = "auto",
    timeout: float = 30.0,
    log_level: str = "info",
) -> None:
    """Run ``api`` under LitServe until interrupted (SIGINT or SIGTERM: workers are shut down with it)."""
    if host not in HOSTS:
        raise ValueError(f"host must be one of {', '.join(HOSTS)} (what LitServe binds), got {host!r}")
    ScoreRequest.limits = limits  # read by the HTTP processes, which fork from this one
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=1,
        timeout=timeout,
        max_payload_size=limits.max_body_bytes(),
    )
    server.app.add_exception_handler(RequestValidationError, _validation_error)

    main = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != main:  # a helper LitServe forked (its queue manager): end as SIGTERM ends it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt  # LitServe's graceful shutdown stops the HTTP and inference workers

    signal.signal(signal.SIGTERM, interrupt)
    server.run(host=host, port=port, log_level=log_level, generate_client_file=False)


def serve_command(
    *,
    model: str,
    base_path: str | None = None,
    host: Host = LOOPBACK,
    port: int = 8000,
    max_batch_size: PositiveInt = 8,
    batch_timeout: float = 0.01,
    forward_batch: PositiveInt = 32,
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto",
    devices: str = "auto",
    timeout: PositiveFloat = 30.0,
    max_images: PositiveInt = RequestLimits.max_images,
    max_image_bytes: PositiveInt = RequestLimits.max_image_bytes,
    max_image_pixels: PositiveInt = RequestLimits.max_image_pixels,
    log_level: Literal["debug", "info", "warning", "error"] = "info",
) -> int:
    """Serve a SpatialScore export over HTTP: POST /predict, GET /health (LitServe, dynamic batching).

    Args:
        model: folder written by SpatialScore.save_pretrained
        base_path: override the base Qwen2.5-VL checkpoint path
        host: address to bind (default 127.0.0.1: this machine only)
        port: TCP port to listen on, 1024..65535
        max_batch_size: requests coalesced into a batch
        batch_timeout: seconds a batch waits to fill (0: never waits; LitServe then polls its queue on one CPU core)
        forward_batch: images per forward pass
        accelerator: device kind of the inference workers (auto: a GPU if there is one)
        devices: 'auto', a count, or indices like 0,2 (3, for index 3): one worker each (on CPU: one worker)
        timeout: seconds a request may wait in queue
        max_images: images per request
        max_image_bytes: largest encoded image of a request, in bytes (larger: 422)
        max_image_pixels: largest decoded image of a request, in pixels, checked from the header before decoding
            (larger: 422)
        log_level: the HTTP server's log level
    """
    prog = "spatialscore serve"
    try:
        workers = parse_devices(devices)
    except ValueError as error:
        raise UsageError(f"argument --devices: {error}") from None
    if not (math.isfinite(batch_timeout) and batch_timeout >= 0):
        raise UsageError(f"--batch_timeout must be >= 0, got {batch_timeout}")
    if not 1024 <= port <= 65535:
        raise UsageError(f"--port must be in 1024..65535, got {port}")
    from spatialscore.model import SpatialScore

    try:  # before starting workers, which would each fail to load it: config sound, every weights file there
        SpatialScore.weight_files(model)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and host != LOOPBACK:
        print(
            f"{prog}: warning: binding {host} without {TOKEN_ENV}: anyone who can reach port {port} can use the model",
            file=sys.stderr,
        )
    api = SpatialScoreAPI(
        model_dir=model,
        base_path=base_path,
        forward_batch=forward_batch,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
        token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
    )
    limits = RequestLimits(max_images=max_images, max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
    serve(
        api,
        limits=limits,
        host=host,
        port=port,
        accelerator=accelerator,
        devices=workers,
        timeout=timeout,
        log_level=log_level,
    )
    return 0


_TOKEN_HELP = f"Set {TOKEN_ENV} in the environment to require 'Authorization: Bearer <token>' on every endpoint."
serve_command.epilog = _TOKEN_HELP  # type: ignore[attr-defined]


def cli_main(argv: list[str] | None = None) -> int:
    """``spatialscore serve`` (:func:`serve_command`)."""
    return run_command(serve_command, argv, prog="spatialscore serve")
