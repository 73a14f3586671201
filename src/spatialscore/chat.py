"""OpenAI-compatible chat endpoints: the one client layer of the LLM perturber and the VLM judges.

Any server that speaks the OpenAI chat-completions API (vLLM, SGLang, a hosted API) is reached through the
official ``openai`` client; nothing here writes HTTP by hand. :class:`EndpointConfig` holds one endpoint's
settings (the ``endpoint`` argument of every user, a mapping in YAML; :func:`endpoint_options` reads the flat
``key=value`` command-line form), and the :class:`ChatEndpoint` made from it adds what batch jobs need:

- the API key is read **only** from an environment variable (``api_key_env``, default ``OPENAI_API_KEY``), never
  from an argument or a config value; unset, the placeholder ``EMPTY`` is sent (local servers without auth);
- a bound on requests in flight (``concurrency``, shared by every thread that uses the endpoint) and
  :meth:`ChatEndpoint.map` to run many calls in a bounded thread pool;
- a per-request ``timeout`` and ``retries`` with exponential backoff (the client's own: connection errors,
  timeouts, 408/409/429/5xx, honouring ``Retry-After``);
- seeded requests (``temperature`` and ``seed`` are sent);
- an on-disk cache of replies keyed by (endpoint, model, request), so a rerun is resumable and a repeated call
  is free (:class:`ReplyCache`);
- errors that name the endpoint, the model and the prompt (:class:`ChatEndpointError`).

:meth:`ChatEndpoint.ask` is the ask-check-retry loop both users share: a reply that the caller's ``check``
rejects (:class:`ReplyRejected`) is answered with the problems as feedback, up to ``attempts`` replies, after
which :class:`RepliesRejectedError` carries the last problems.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import openai
from PIL import Image

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "ENDPOINT_OPTIONS",
    "ChatEndpoint",
    "ChatEndpointError",
    "EndpointConfig",
    "Message",
    "RepliesRejectedError",
    "ReplyCache",
    "ReplyRejected",
    "check_int",
    "default_cache_dir",
    "endpoint_options",
    "image_part",
    "parse_json_object",
    "parse_options",
]

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
NO_API_KEY = "EMPTY"  # what vLLM and SGLang expect from clients of a server started without --api-key
_LABEL_CHARS = 200  # characters of a prompt quoted in an error message
T = TypeVar("T")
R = TypeVar("R")
Message = dict[str, Any]


class ChatEndpointError(RuntimeError):
    """A chat request that failed after its retries; the message names the endpoint, the model and the prompt."""


class ReplyRejected(ValueError):
    """Raised by a reply check: ``problems`` are sent back to the model as feedback."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class RepliesRejectedError(ChatEndpointError):
    """Every one of ``attempts`` replies was rejected; ``problems`` are the last reply's."""

    def __init__(self, message: str, *, problems: Sequence[str], last_reply: str) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.last_reply = last_reply


def default_cache_dir() -> Path:
    """``$SPATIALREWARD_CACHE/chat`` (default ``~/.cache/spatialreward/chat``)."""
    from spatialscore.files import tiny_cache_dir

    return tiny_cache_dir() / "chat"


def check_int(name: str, value: Any, *, low: int) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _label(text: str) -> str:
    return repr(text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS] + "...")


class ReplyCache:
    """Replies on disk, one JSON file per request key (``DIR/ab/abcdef....json``), written atomically.

    Safe for many threads and processes: a file appears complete or not at all; an unreadable one is a miss.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached reply text of ``key``, or ``None``."""
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        content = record.get("content") if isinstance(record, dict) else None
        return content if isinstance(content, str) else None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` (must hold the reply as ``content``) under ``key``."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as sink:
                json.dump(dict(record), sink, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class EndpointConfig:
    """One OpenAI-compatible chat model and how to reach it: the settings of a :class:`ChatEndpoint`.

    The one home of the endpoint settings of the LLM perturber, the VLM judges and the VLM-judge reward (each
    takes it as ``endpoint``). In YAML a mapping, e.g. ``endpoint: {base_url: http://127.0.0.1:8000/v1, model:
    Qwen/Qwen2.5-VL-7B-Instruct, concurrency: 16}``; in Python ``EndpointConfig(base_url=..., model=...)``; on
    the command line the flat ``key=value`` options that :func:`endpoint_options` reads. Every value is checked
    on construction (a ValueError naming the field); nothing is sent until the first request.

    One set of defaults serves every user: a 120 s timeout (a VLM reading images and an LLM writing a long JSON
    reply both need it) and 1024 reply tokens (the perturber's replies are long, and a reasoning model's
    thinking counts against the limit, which would cut a judge's short reply at a lower one).

    Args:
        base_url: The server's OpenAI API root, an http(s) URL such as ``http://127.0.0.1:8000/v1`` (``vllm
            serve``, SGLang, a hosted API); a trailing ``/`` is dropped.
        model: The model name the server knows, e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``.
        api_key_env: The environment variable that holds the API key (never the key itself); unset or empty, the
            placeholder ``EMPTY`` is sent, as local vLLM/SGLang servers without ``--api-key`` expect.
        concurrency: Requests in flight at most, over all threads of one user; prompts and images are asked
            concurrently on this many threads.
        timeout: Seconds per request attempt (a VLM reading images or a long JSON reply can take a while).
        retries: Further attempts after a connection error, a timeout, 408, 409, 429 or 5xx (exponential
            backoff from 0.5 s, at most 8 s, honouring ``Retry-After``).
        temperature: The sampling temperature; ``null``/``None`` sends none (for models that refuse one).
        seed: The request seed; ``null``/``None`` sends none. The LLM perturber sends each prompt's own seed
            instead (drawn from ``spatialscore perturb --seed``), so there it has no effect.
        max_tokens: The reply's token limit, sent as ``max_completion_tokens`` (a reasoning model's thinking
            counts against it); ``null``/``None`` leaves it to the server.
        json_mode: Ask for a JSON object (``response_format: {"type": "json_object"}``); every user wants one.
        extra_body: Server-specific request fields, sent as they are (e.g. vLLM's ``{"top_k": 20}``).
        cache_dir: Where replies are cached; default ``$SPATIALREWARD_CACHE/chat``
            (``~/.cache/spatialreward/chat``).
        cache: Cache replies on disk, one file per (endpoint, model, request): a rerun is answered from the cache
            (resumable, free) instead of asking again.
    """

    base_url: str
    model: str
    api_key_env: str = DEFAULT_API_KEY_ENV
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 2
    temperature: float | None = 0.0
    seed: int | None = 0
    max_tokens: int | None = 1024
    json_mode: bool = True
    extra_body: dict[str, Any] | None = None
    cache_dir: str | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not re.match(r"https?://", self.base_url):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if not isinstance(self.api_key_env, str) or not self.api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {self.api_key_env!r}")
        check_int("concurrency", self.concurrency, low=1)
        check_int("retries", self.retries, low=0)
        if self.max_tokens is not None:
            check_int("max_tokens", self.max_tokens, low=1)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if not _is_number(self.timeout) or not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.temperature is not None and (not _is_number(self.temperature) or self.temperature < 0):
            raise ValueError(f"temperature must be a number >= 0 or None, got {self.temperature!r}")
        for name in ("json_mode", "cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.extra_body is not None and not isinstance(self.extra_body, Mapping):
            raise ValueError(f"extra_body must be a mapping of request fields, got {self.extra_body!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str | os.PathLike):
            raise ValueError(f"cache_dir must be a path, got {self.cache_dir!r}")
        # normal forms (a frozen dataclass: set through object.__setattr__)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "timeout", float(self.timeout))
        if self.extra_body is not None:
            object.__setattr__(self, "extra_body", dict(self.extra_body))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))


ENDPOINT_OPTIONS = tuple(field.name for field in fields(EndpointConfig))


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def endpoint_options(
    options: Mapping[str, Any], *, what: str, own: Collection[str] = ()
) -> tuple[EndpointConfig, dict[str, Any]]:
    """Flat command-line options (``key=value``, as :func:`parse_options` reads them) as ``(config, rest)``.

    The keys that are :class:`EndpointConfig` fields build the config; those in ``own`` (the user's own
    settings, e.g. a judge's ``attempts``) are returned in ``rest``. An unknown key, a missing ``base_url`` or
    ``model`` and a bad value are a ValueError that starts with ``what`` and names the key.
    """
    unknown = [key for key in options if key not in ENDPOINT_OPTIONS and key not in own]
    if unknown:
        known = ", ".join([*ENDPOINT_OPTIONS, *own])
        raise ValueError(
            f"{what}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (known: {known})"
        )
    missing = [key for key in ("base_url", "model") if key not in options]
    if missing:
        raise ValueError(f"{what} needs {' and '.join(f'{k}=...' for k in missing)}")
    try:
        config = EndpointConfig(**{k: v for k, v in options.items() if k in ENDPOINT_OPTIONS})
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None
    return config, {k: v for k, v in options.items() if k in own}


class ChatEndpoint:
    """The client of one OpenAI-compatible chat model, made from an :class:`EndpointConfig` (its ``config``).

    At most ``config.concurrency`` requests are in flight over all threads; each attempt is limited by
    ``config.timeout`` and failures are retried ``config.retries`` times; ``temperature``, ``seed`` (which
    :meth:`complete` may override per request), ``max_tokens``, ``json_mode`` and ``extra_body`` shape every
    request; replies are cached under ``config.cache_dir`` unless ``config.cache`` is false.
    """

    def __init__(self, config: EndpointConfig) -> None:
        if not isinstance(config, EndpointConfig):
            raise TypeError(
                f"ChatEndpoint takes an EndpointConfig, got {type(config).__name__} "
                "(e.g. ChatEndpoint(EndpointConfig(base_url=..., model=...)))"
            )
        self.config = config
        self.cache = (
            ReplyCache(config.cache_dir if config.cache_dir is not None else default_cache_dir())
            if config.cache
            else None
        )
        self.requests_sent = 0
        self.cache_hits = 0
        self._counter_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or NO_API_KEY,
            timeout=config.timeout,
            max_retries=config.retries,
        )

    @property
    def base_url(self) -> str:
        """The endpoint's URL (``config.base_url``)."""
        return self.config.base_url

    @property
    def model(self) -> str:
        """The model's name (``config.model``)."""
        return self.config.model

    def __repr__(self) -> str:
        return f"ChatEndpoint(base_url={self.base_url!r}, model={self.model!r})"

    def request_body(self, messages: Sequence[Message], *, seed: int | None = None) -> dict[str, Any]:
        """The JSON body sent for ``messages`` (the cache key covers it all)."""
        config = self.config
        body: dict[str, Any] = {"model": config.model, "messages": list(messages)}
        if config.temperature is not None:
            body["temperature"] = config.temperature
        seed = config.seed if seed is None else seed
        if seed is not None:
            body["seed"] = seed
        if config.max_tokens is not None:
            body["max_completion_tokens"] = config.max_tokens
        if config.json_mode:
            body["response_format"] = {"type": "json_object"}
        if config.extra_body:
            body["extra_body"] = config.extra_body
        return body

    def cache_key(self, body: Mapping[str, Any]) -> str:
        """SHA-256 of (endpoint, model, request body)."""
        text = json.dumps({"endpoint": self.base_url, "request": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def complete(self, messages: Sequence[Message], *, label: str, seed: int | None = None) -> str:
        """The reply text to ``messages`` (from the cache when this exact request was answered before).

        ``label`` (usually the prompt being worked on) names the request in errors. Raises
        :class:`ChatEndpointError` once the retries are spent or when the server refuses the request.
        """
        body = self.request_body(messages, seed=seed)
        key = self.cache_key(body)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                with self._counter_lock:
                    self.cache_hits += 1
                return cached
        with self._slots:
            with self._counter_lock:
                self.requests_sent += 1
            try:
                completion = self._client.chat.completions.create(**body)
            except openai.APIStatusError as error:
                hint = f" (is ${self.config.api_key_env} set?)" if error.status_code in (401, 403) else ""
                raise self._error(label, f"HTTP {error.status_code}{hint}: {error.message}") from error
            except openai.APIError as error:  # connection errors and timeouts, after the retries
                raise self._error(label, f"{type(error).__name__}: {error}") from error
        try:
            content = completion.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as error:
            raise self._error(label, f"malformed reply without choices[0].message ({error})") from error
        if self.cache is not None:
            self.cache.put(key, {"endpoint": self.base_url, "model": self.model, "label": label, "content": content})
        return content

    def _error(self, label: str, cause: str) -> ChatEndpointError:
        attempts = self.config.retries + 1
        return ChatEndpointError(
            f"chat endpoint {self.base_url} (model {self.model!r}) failed for prompt {_label(label)} after "
            f"{attempts} attempt{'s' if attempts != 1 else ''} ({self.config.timeout:g} s timeout each): {cause}"
        )

    def ask(
        self,
        messages: Sequence[Message],
        *,
        check: Callable[[str], T],
        label: str,
        attempts: int = 3,
        seed: int | None = None,
    ) -> T:
        """``check(reply)`` of the first reply it accepts, asking again with the problems as feedback.

        ``check`` raises :class:`ReplyRejected` for a reply it refuses; the rejected reply and a user message
        listing the problems are appended to the conversation. After ``attempts`` rejected replies raises
        :class:`RepliesRejectedError` (a :class:`ChatEndpointError`) with the last problems.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        conversation = list(messages)
        attempt = 1
        while True:
            reply = self.complete(conversation, label=label, seed=seed)
            try:
                return check(reply)
            except ReplyRejected as rejected:
                if attempt >= attempts:
                    raise RepliesRejectedError(
                        f"chat endpoint {self.base_url} (model {self.model!r}): {attempts} replies for prompt "
                        f"{_label(label)} rejected; last: {rejected}",
                        problems=rejected.problems,
                        last_reply=reply,
                    ) from None
                feedback = "Your reply was rejected:\n" + "\n".join(f"- {p}" for p in rejected.problems)
            conversation += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": feedback + "\nReply again with only the corrected JSON object."},
            ]
            attempt += 1

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[function(item) for item in items]`` on ``config.concurrency`` threads, in order.

        The first exception (in input order) is raised after the calls already running finish; calls not yet
        started are cancelled.
        """
        items = list(items)
        concurrency = self.config.concurrency
        if len(items) <= 1 or concurrency == 1:
            return [function(item) for item in items]
        results: list[Any] = [None] * len(items)
        errors: dict[int, BaseException] = {}
        with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
            futures = {pool.submit(function, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                index = futures[future]
                error = future.exception()
                if error is None:
                    results[index] = future.result()
                    continue
                errors[index] = error
                for other in futures:
                    other.cancel()
        if errors:
            raise errors[min(errors)]
        return results


def image_part(image: Image.Image) -> Message:
    """A chat content part holding ``image`` as a base64 PNG data URL (OpenAI's ``image_url`` form)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.S | re.I)


def parse_json_object(reply: str) -> dict[str, Any]:
    """The JSON object of a reply (a Markdown code fence around it is allowed); :class:`ReplyRejected` if none."""
    fenced = _FENCE.match(reply)
    text = fenced.group(1) if fenced else reply
    try:
        value = json.loads(text)
    except ValueError as error:
        shown = reply if len(reply) <= 80 else reply[:80] + "..."
        raise ReplyRejected([f"the reply is not valid JSON ({error}): {shown!r}"]) from None
    if not isinstance(value, dict):
        raise ReplyRejected([f"the reply must be a JSON object, got {type(value).__name__}"])
    return value


def parse_options(items: Iterable[str], *, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings as keyword arguments: a value that is JSON (``8``, ``0.5``, ``true``, ``null``,
    ``"7"``, ``["flip", "swap"]``) is parsed, anything else stays a string. ``what`` names the options in errors;
    an ``api_key`` option is refused (keys come from the environment only)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        if key in options:
            raise ValueError(f"{what}: {key!r} given twice")
        if key == "api_key":
            raise ValueError(f"{what}: API keys are read from the environment only; set api_key_env=VARIABLE")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options
