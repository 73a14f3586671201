"""`spatialscore serve` (LitServe) and RemoteReward, on 127.0.0.1: scores, batching, refusals, a killed server."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from jsonargparse import ArgumentParser
from PIL import Image

from spatialrl.rewards import (
    RemoteReward,
    RemoteRewardError,
    Reward,
    SpatialScoreReward,
    WeightedReward,
    compute_reward,
)
from spatialscore.data.manifest import MAX_PROMPT_CHARS
from spatialscore.launch import free_port, start_server, stop_server
from spatialscore.model import SpatialScore
from spatialscore.serve import TOKEN_ENV, RequestLimits, SpatialScoreAPI, cli_main, decode_image

TOKEN = "test-token"
PROMPTS = [
    "a red circle to the left of a blue square",
    "a green triangle above a yellow circle",
    "a purple diamond in the upper-left corner; an orange square below a purple diamond",
    "from left to right: a red circle, a blue square and a cyan diamond",
    "a magenta square at the top edge",
]
LIMITS = ["--max-images", "4", "--max-image-bytes", "20000", "--max-image-pixels", str(128 * 128)]


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``sig`` (SIGKILL or SIGTERM) to the server and every process it started."""
    stop_server(process, graceful=sig == signal.SIGTERM)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def export(spatialscore_export: Path) -> tuple[SpatialScore, Path]:
    """A tiny random SpatialScore and its export folder (the base model copied inside)."""
    return SpatialScore.from_pretrained(spatialscore_export), spatialscore_export


class Server:
    """A ``spatialscore serve`` with a token, batches of up to 8 requests gathered for 0.3 s and small limits."""

    def __init__(self, export: Path, log: Path) -> None:
        self.export, self.log, self.port = export, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        options = ("--max-batch-size", "8", "--batch-timeout", "0.3", *LIMITS)
        self.process, _ = start_server(self.export, port=self.port, options=options, token=TOKEN, log=self.log)


@pytest.fixture(scope="module")
def served(export, tmp_path_factory) -> Server:
    server = Server(export[1], tmp_path_factory.mktemp("serve-log") / "server.log")
    server.start()
    yield server
    kill(server.process, signal.SIGTERM)  # the graceful path: every worker stops with it


@pytest.fixture
def server(served: Server) -> str:
    return served.url


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Five random float (3, 64, 64) images in [0, 1], as a generator's output."""
    return torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_api_scores_coalesced_and_single_requests_as_score_does(export, images):
    model, path = export
    pixels = [(image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for image in images]
    expected = model.score(prompts=PROMPTS, images=pixels)
    batched = SpatialScoreAPI(model_dir=str(path), max_batch_size=4)
    batched.setup("cpu")
    out = batched.predict([(PROMPTS[:2], pixels[:2]), (PROMPTS[2:], pixels[2:])])
    assert [(len(o["mu"]), o["batch_requests"], o["batch_images"]) for o in out] == [(2, 2, 5), (3, 2, 5)]
    torch.testing.assert_close(torch.tensor(out[0]["mu"] + out[1]["mu"]), expected.mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(out[0]["sigma"] + out[1]["sigma"]), expected.sigma, rtol=0, atol=1e-5)
    single = SpatialScoreAPI(model_dir=str(path), max_batch_size=1)  # LitServe passes one request, unbatched
    single.setup("cpu")
    one = single.predict((PROMPTS[:2], pixels[:2]))
    torch.testing.assert_close(torch.tensor(one["mu"]), expected.mu[:2], rtol=0, atol=1e-5)


def test_images_are_decoded_by_the_project_loader_with_limits_checked_first():
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(buffer, format="PNG")  # 16-bit greyscale
    sixteen_bit = base64.b64encode(buffer.getvalue()).decode()
    assert (decode_image(sixteen_bit, limits=RequestLimits()) == 255).all()  # scaled, not clipped to white
    with pytest.raises(ValueError, match="6x4 = 24 pixels, over the limit of 23"):
        decode_image(sixteen_bit, limits=RequestLimits(max_image_pixels=23))


def test_serve_refuses_a_folder_that_is_not_an_export_before_starting(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--model", str(tmp_path)])
    assert exit_info.value.code == 2 and "not a SpatialScore folder" in capsys.readouterr().err


def test_serve_refuses_an_export_missing_a_weights_file_before_starting(spatialscore_export, tmp_path, capsys):
    import shutil

    broken = tmp_path / "export"
    shutil.copytree(spatialscore_export, broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--model", str(broken)])
    assert exit_info.value.code == 2 and "adapter_model.safetensors" in capsys.readouterr().err


def test_health_and_bearer_token(server):
    assert requests.get(f"{server}/health", headers=auth(), timeout=5).text == "ok"
    body = {"prompts": PROMPTS[:1], "images": [png(np.zeros((8, 8, 3), np.uint8))]}
    for headers in ({}, auth("wrong"), {"Authorization": f"Basic {TOKEN}"}):
        for response in (
            requests.get(f"{server}/health", headers=headers, timeout=5),
            requests.post(f"{server}/predict", json=body, headers=headers, timeout=5),
        ):
            assert response.status_code == 401, headers
    assert requests.post(f"{server}/predict", json=body, headers=auth(), timeout=30).status_code == 200


def test_remote_reward_equals_in_process_scores(server, export, images, monkeypatch):
    model, _ = export
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    remote = RemoteReward(server, batch_size=2, concurrency=3, uncertainty_penalty=0.5)
    rewards = compute_reward(remote, images=images, prompts=PROMPTS)
    out = model.score(prompts=PROMPTS, images=list(images))
    torch.testing.assert_close(rewards, out.mu - 0.5 * out.sigma, rtol=0, atol=1e-5)
    # atol 1e-5 means something only if the scores depend on the pixels by much more than that
    assert (remote(images=1 - images, prompts=PROMPTS) - rewards).abs().max() > 1e-3
    # in a weighted sum, beside the in-process reward of the same export
    local = SpatialScoreReward(str(export[1]), uncertainty_penalty=0.5)
    total = WeightedReward(rewards=[remote, local], weights=[1.0, -1.0])(images=images, prompts=PROMPTS)
    assert total.abs().max() < 1e-5


def test_concurrent_requests_are_coalesced_into_batches(server, export, images):
    model, _ = export
    pixels = [(image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for image in images[:4]]
    start = threading.Barrier(len(pixels))
    answers: dict[int, dict] = {}

    def post(i: int) -> None:
        start.wait()
        body = {"prompts": [PROMPTS[i]], "images": [png(pixels[i])]}
        answers[i] = requests.post(f"{server}/predict", json=body, headers=auth(), timeout=30).json()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(pixels))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(a["batch_requests"] for a in answers.values()) > 1  # several requests, one forward batch
    expected = model.score(prompts=PROMPTS[:4], images=pixels).mu
    torch.testing.assert_close(torch.tensor([answers[i]["mu"][0] for i in range(4)]), expected, rtol=0, atol=1e-5)


def test_bad_requests_are_refused_with_4xx(server, monkeypatch):
    rng = np.random.default_rng(0)
    small = png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    truncated = base64.b64encode(base64.b64decode(small)[:100]).decode()
    cases = {
        "over the limit of 4 per request": {"prompts": ["p"] * 5, "images": [small] * 5},
        "over the limit of 20000 bytes": {
            "prompts": ["p"],
            "images": [png(rng.integers(0, 256, (96, 96, 3), np.uint8))],
        },
        "over the limit of 16384": {"prompts": ["p"], "images": [png(np.zeros((200, 200, 3), np.uint8))]},
        "not a PNG, JPEG, WEBP image": {"prompts": ["p"], "images": [base64.b64encode(b"GIF89a not really").decode()]},
        "not base64": {"prompts": ["p"], "images": ["@@@@"]},
        "truncated or corrupt": {"prompts": ["p"], "images": [truncated]},
        "(MAX_PROMPT_CHARS)": {"prompts": ["p" * (MAX_PROMPT_CHARS + 1)], "images": [small]},
        "got 2 prompts but 1 images": {"prompts": ["p", "q"], "images": [small]},
        "Input should be a valid list": {"prompts": "p", "images": [small]},
    }
    for message, body in cases.items():
        response = requests.post(f"{server}/predict", json=body, headers=auth(), timeout=30)
        assert response.status_code == 422 and message in response.text, (message, response.text[:300])
        assert len(response.content) < 2000  # the request (its images) is not echoed back
    huge = {"prompts": ["p"], "images": [small], "padding": "x" * (1 << 20)}
    assert requests.post(f"{server}/predict", json=huge, headers=auth(), timeout=30).status_code == 413
    # RemoteReward does not retry a refusal: it names the URL and the prompt at once
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    long_prompt = "a red circle " * 400
    with pytest.raises(RemoteRewardError, match=f"POST {server}/predict \\(prompt '{long_prompt[:20]}.*HTTP 422"):
        RemoteReward(server, retries=3, backoff=10.0)(images=torch.rand(1, 3, 16, 16), prompts=[long_prompt])
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(RemoteRewardError, match="HTTP 401"):
        RemoteReward(server)(images=torch.rand(1, 3, 16, 16), prompts=["p"])


class KillsTheServer(RemoteReward):
    """Scores its first call, then kills the server: the rest of the step finds it gone."""

    process: subprocess.Popen | None = None

    def __call__(self, **kwargs):
        rewards = super().__call__(**kwargs)
        if self.process is not None:
            kill(self.process)
            self.process = None
        return rewards


def test_server_killed_mid_step_fails_it_naming_url_and_prompt_and_a_restart_recovers(served, tmp_path, monkeypatch):
    from test_overlap import fit, make_module

    from spatialscore.data.datamodule import SyntheticData

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    data = SyntheticData(
        directory=str(tmp_path / "data"), train_pairs=8, val_pairs=2, test_pairs=0, stages=(1,), eval_stages=(1,)
    )
    reward = KillsTheServer(served.url, batch_size=4, retries=2, backoff=0.05)
    reward.process = served.process
    # rollout chunks of 5: the first is scored, then the server dies while the step samples the next
    pattern = rf"POST {served.url}/predict \(prompt '.+'.*failed after 3 attempts: cannot connect"
    with pytest.raises(RemoteRewardError, match=pattern):
        fit(make_module(reward, overlap_reward=True), data)
    assert reward.process is None and served.process.poll() is not None
    served.start()  # the same port, so the same URL: the next step scores again
    logged = fit(make_module(reward, overlap_reward=True), data)
    assert np.isfinite(logged["train/reward_mean"])


# ---------------------------------------------------------------------------------------------------------
# RemoteReward's retries against a scripted stub (no model): timeouts, 5xx, recovery, malformed answers
# ---------------------------------------------------------------------------------------------------------


class Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body, delay) of ``script``; the last one repeats."""

    script: list[tuple[int, object, float]] = []
    requests: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        status, answer, delay = self.script[min(len(self.requests), len(self.script)) - 1]
        time.sleep(delay)
        payload = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub():
    Scripted.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_reward_retries_then_names_url_and_prompt(stub):
    image = torch.rand(1, 3, 8, 8)
    ok = {"mu": [0.25], "sigma": [0.5], "log_sigma": [0.0]}
    Scripted.script = [(503, "warming up", 0.0), (500, "boom", 0.0), (200, ok, 0.0)]
    reward = RemoteReward(stub, retries=2, backoff=0.01, uncertainty_penalty=1.0)
    assert reward(images=image, prompts=["a red circle"]).tolist() == [-0.25]  # recovered on the third attempt
    assert len(Scripted.requests) == 3 and Scripted.requests[0]["prompts"] == ["a red circle"]

    Scripted.requests, Scripted.script = [], [(500, "boom", 0.0)]
    with pytest.raises(
        RemoteRewardError,
        match=rf"POST {stub}/predict \(prompt 'a red circle'\) failed after 3 "
        "attempts: HTTP 500: boom",
    ):
        reward(images=image, prompts=["a red circle"])
    assert len(Scripted.requests) == 3

    Scripted.requests, Scripted.script = [], [(200, ok, 1.0)]
    with pytest.raises(RemoteRewardError, match="prompt 'slow'.*failed after 2 attempts: no answer within 0.2 s"):
        RemoteReward(stub, timeout=0.2, retries=1, backoff=0.0)(images=image, prompts=["slow"])

    for answer in ('{"mu": [NaN], "sigma": [1.0]}', {"mu": [1.0, 2.0], "sigma": [1.0, 1.0]}, "not json"):
        Scripted.requests, Scripted.script = [], [(200, answer, 0.0)]
        with pytest.raises(RemoteRewardError, match="answered something other than 1 finite mu and sigma"):
            reward(images=image, prompts=["p"])
        assert len(Scripted.requests) == 1  # a malformed answer is not retried


def test_remote_reward_batches_and_orders_concurrent_requests(stub):
    Scripted.script = [(200, {"mu": [1.0, 2.0, 3.0], "sigma": [0.0] * 3}, 0.05)]
    rewards = RemoteReward(stub, batch_size=3, concurrency=2)(images=torch.rand(6, 3, 8, 8), prompts=list("abcdef"))
    assert rewards.tolist() == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    assert sorted(r["prompts"] for r in Scripted.requests) == [list("abc"), list("def")]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        RemoteReward(stub, batch_size=0)
    with pytest.raises(ValueError, match="url must start with http"):
        RemoteReward("127.0.0.1:8000")


def test_remote_reward_parses_from_yaml_alone_and_in_a_weighted_sum():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=Reward)
    remote = {
        "class_path": "spatialrl.rewards.RemoteReward",
        "init_args": {"url": "http://10.0.0.5:8000", "batch_size": 4, "retries": 1, "token_env": "MY_TOKEN"},
    }
    config = {
        "reward": {
            "class_path": "spatialrl.rewards.WeightedReward",
            "init_args": {"weights": [1.0, 0.5], "rewards": [remote, {"class_path": "spatialrl.rewards.RuleReward"}]},
        }
    }
    reward = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).reward
    parsed = reward.rewards[0]
    assert isinstance(parsed, RemoteReward) and parsed.url == "http://10.0.0.5:8000"
    assert (parsed.batch_size, parsed.retries, parsed.token_env, parsed.concurrency) == (4, 1, "MY_TOKEN", 4)
