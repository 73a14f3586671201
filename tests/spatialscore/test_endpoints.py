"""The shared OpenAI-compatible chat layer (spatialscore.chat) against a stub server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from chat_stub import StubReply, last_user_text, serve_stubs

from spatialscore.chat import (
    ENDPOINT_OPTIONS,
    ChatEndpoint,
    ChatEndpointError,
    EndpointConfig,
    RepliesRejectedError,
    ReplyRejected,
    endpoint_options,
    parse_json_object,
    parse_options,
)


@pytest.fixture
def chat_stub():
    yield from serve_stubs()


def echo(body: dict) -> str:
    return "echo: " + last_user_text(body)


def endpoint(url: str, cache_dir: Path | None, **options) -> ChatEndpoint:
    return ChatEndpoint(
        EndpointConfig(base_url=url, model="stub-model", cache_dir=cache_dir, cache=cache_dir is not None, **options)
    )


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_key_from_environment_sent_as_bearer_with_seeded_request(chat_stub, monkeypatch, tmp_path):
    monkeypatch.setenv("STUB_KEY", "sk-from-env")
    stub = chat_stub(echo)
    chat = endpoint(stub.url, None, api_key_env="STUB_KEY", temperature=0.3, seed=11, max_tokens=64)
    assert chat.complete(user("hello"), label="hello") == "echo: hello"
    assert chat.complete(user("again"), label="again", seed=5) == "echo: again"
    assert stub.headers[0]["authorization"] == "Bearer sk-from-env"
    first, second = stub.bodies
    assert first["model"] == "stub-model" and first["temperature"] == 0.3 and first["seed"] == 11
    assert first["max_completion_tokens"] == 64 and first["response_format"] == {"type": "json_object"}
    assert second["seed"] == 5


def test_unset_key_sends_placeholder_and_401_names_the_variable(chat_stub, monkeypatch):
    monkeypatch.delenv("STUB_KEY", raising=False)
    stub = chat_stub(lambda body: StubReply(status=401))
    chat = endpoint(stub.url, None, api_key_env="STUB_KEY")
    with pytest.raises(ChatEndpointError, match=r"HTTP 401 \(is \$STUB_KEY set\?\)") as error:
        chat.complete(user("a cat left of a dog"), label="a cat left of a dog")
    assert stub.url in str(error.value) and "'a cat left of a dog'" in str(error.value)
    assert stub.headers[0]["authorization"] == "Bearer EMPTY"
    assert stub.count == 1  # a 401 is not retried


def test_cache_makes_repeats_free_and_resumes_across_instances(chat_stub, tmp_path):
    stub, other = chat_stub(echo), chat_stub(echo)
    chat = endpoint(stub.url, tmp_path)
    assert chat.complete(user("one"), label="one") == "echo: one"
    assert chat.complete(user("one"), label="one") == "echo: one"
    assert (stub.count, chat.requests_sent, chat.cache_hits) == (1, 1, 1)
    again = endpoint(stub.url, tmp_path)  # a rerun: a new process, the same cache folder
    assert again.complete(user("one"), label="one") == "echo: one" and stub.count == 1
    # the key covers the endpoint, the model and the whole request
    again.complete(user("two"), label="two")
    again.complete(user("one"), label="one", seed=1)
    ChatEndpoint(EndpointConfig(base_url=stub.url, model="other-model", cache_dir=tmp_path)).complete(
        user("one"), label="one"
    )
    assert stub.count == 4
    endpoint(other.url, tmp_path).complete(user("one"), label="one")
    assert other.count == 1


def test_torn_cache_file_is_a_miss(chat_stub, tmp_path):
    stub = chat_stub(echo)
    chat = endpoint(stub.url, tmp_path)
    chat.complete(user("one"), label="one")
    (cached,) = tmp_path.rglob("*.json")
    cached.write_text('{"content": "ech', encoding="utf-8")
    assert chat.complete(user("one"), label="one") == "echo: one" and stub.count == 2


def test_server_errors_are_retried_then_reported(chat_stub):
    failures = {"left": 2}

    def flaky(body: dict) -> str | StubReply:
        if failures["left"]:
            failures["left"] -= 1
            return StubReply(status=500)
        return echo(body)

    stub = chat_stub(flaky)
    begin = time.perf_counter()
    assert endpoint(stub.url, None, retries=2).complete(user("x"), label="x") == "echo: x"
    assert stub.count == 3
    assert time.perf_counter() - begin > 1.0  # backoff: about 0.5 s, then 1 s (less up to 25% jitter)
    down = chat_stub(lambda body: StubReply(status=503))
    with pytest.raises(ChatEndpointError, match=r"after 2 attempts .*HTTP 503") as error:
        endpoint(down.url, None, retries=1).complete(user("a red cube"), label="a red cube")
    assert down.url in str(error.value) and "'a red cube'" in str(error.value)
    assert down.count == 2


def test_slow_replies_time_out_per_request(chat_stub):
    stub = chat_stub(lambda body: StubReply(content="late", delay=30))
    chat = endpoint(stub.url, None, timeout=0.3, retries=1)
    begin = time.perf_counter()
    with pytest.raises(ChatEndpointError, match=r"after 2 attempts \(0.3 s timeout each\): APITimeoutError") as error:
        chat.complete(user("a slow prompt"), label="a slow prompt")
    assert time.perf_counter() - begin < 5
    assert stub.url in str(error.value) and "'a slow prompt'" in str(error.value)
    assert stub.count == 2


def test_concurrency_bound_holds_across_threads(chat_stub):
    stub = chat_stub(lambda body: StubReply(content=echo(body), delay=0.15))
    chat = endpoint(stub.url, None, concurrency=3)
    outer: list[list[str]] = [[], []]

    def run(slot: int) -> None:
        texts = [f"{slot}-{i}" for i in range(6)]
        outer[slot] = chat.map(lambda t: chat.complete(user(t), label=t), texts)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outer == [[f"echo: {s}-{i}" for i in range(6)] for s in (0, 1)]  # in order
    assert stub.count == 12 and stub.max_in_flight == 3


def test_map_raises_the_first_error_in_input_order(chat_stub):
    stub = chat_stub(echo)
    chat = endpoint(stub.url, None, concurrency=2)

    def work(i: int) -> int:
        if i in (3, 5):
            raise ValueError(f"bad {i}")
        return i

    with pytest.raises(ValueError, match="bad 3"):
        chat.map(work, range(8))
    assert chat.map(work, [0, 1, 2]) == [0, 1, 2]


def test_ask_sends_problems_back_and_gives_up_after_attempts(chat_stub):
    replies = iter(["not json", '{"score": 11}', '{"score": 7}'])
    stub = chat_stub(lambda body: next(replies))
    chat = endpoint(stub.url, None)

    def check(reply: str) -> int:
        value = parse_json_object(reply)
        if not 1 <= value["score"] <= 10:
            raise ReplyRejected([f"score {value['score']} is outside 1-10"])
        return value["score"]

    assert chat.ask(user("rate it"), check=check, label="rate it", attempts=3) == 7
    assert "not valid JSON" in last_user_text(stub.bodies[1])
    assert "score 11 is outside 1-10" in last_user_text(stub.bodies[2])
    assert [m["role"] for m in stub.bodies[2]["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    stub.responder = lambda body: '{"score": 0}'
    with pytest.raises(RepliesRejectedError, match=r"2 replies for prompt 'again' rejected") as error:
        chat.ask(user("again"), check=check, label="again", attempts=2)
    assert error.value.problems == ["score 0 is outside 1-10"] and error.value.last_reply == '{"score": 0}'


def test_parse_json_object_and_options():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ReplyRejected, match="must be a JSON object"):
        parse_json_object("[1]")
    assert parse_options(["concurrency=8", "base_url=http://h:1/v1", 'model="7"', 'kinds=["flip"]'], what="x") == {
        "concurrency": 8,
        "base_url": "http://h:1/v1",
        "model": "7",
        "kinds": ["flip"],
    }
    with pytest.raises(ValueError, match="environment only"):
        parse_options(["api_key=sk-123"], what="x")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["oops"], what="x")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("concurrency", 0),
        ("retries", -1),
        ("timeout", 0),
        ("base_url", "127.0.0.1:8000"),
        ("model", ""),
        ("max_tokens", 0),
        ("temperature", -1),
        ("seed", "7"),
        ("cache", "no"),
        ("extra_body", ["top_k"]),
    ],
)
def test_bad_settings_refused(option, value):
    settings = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "cache": False, option: value}
    with pytest.raises(ValueError, match=option):
        EndpointConfig(**settings)


def test_config_normal_form_and_client():
    config = EndpointConfig(base_url="http://127.0.0.1:1/v1/", model="m", timeout=5, cache_dir=Path("/tmp/c"))
    assert (config.base_url, config.timeout, config.cache_dir) == ("http://127.0.0.1:1/v1", 5.0, "/tmp/c")
    chat = ChatEndpoint(config)
    assert chat.config is config and chat.base_url == config.base_url and chat.model == "m"
    with pytest.raises(TypeError, match="takes an EndpointConfig"):
        ChatEndpoint({"base_url": "http://127.0.0.1:1/v1", "model": "m"})


def test_flat_options_build_the_config():
    config, own = endpoint_options(
        parse_options(["base_url=http://h:1/v1", "model=m", "concurrency=8", "attempts=2"], what="x"),
        what="x",
        own=("attempts",),
    )
    assert config == EndpointConfig(base_url="http://h:1/v1", model="m", concurrency=8) and own == {"attempts": 2}
    with pytest.raises(ValueError, match=r"^x: unknown option 'colour' \(known: base_url, model, .*attempts\)"):
        endpoint_options({"base_url": "http://h:1/v1", "model": "m", "colour": "red"}, what="x", own=("attempts",))
    with pytest.raises(ValueError, match=r"x needs base_url=\.\.\. and model=\.\.\."):
        endpoint_options({"concurrency": 2}, what="x")
    with pytest.raises(ValueError, match="^x: concurrency must be an integer >= 1"):
        endpoint_options({"base_url": "http://h:1/v1", "model": "m", "concurrency": 0}, what="x")
    assert set(ENDPOINT_OPTIONS) >= {"base_url", "model", "api_key_env", "timeout", "cache_dir", "cache"}
