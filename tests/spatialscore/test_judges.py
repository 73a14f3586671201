"""VLM judges (spatialscore.judges) as benchmark scorers and as an RL reward, against a stub on 127.0.0.1.

The stub "sees": it decodes the images of each request and rates them with the procedural RuleChecker, so
a judge's answers depend on the pixels and the prompt it was sent.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re

import numpy as np
import pytest
import torch
import yaml
from chat_stub import StubReply, images_of, last_user_text, serve_stubs
from jsonargparse import ArgumentParser
from PIL import Image

from spatialrl.judge_reward import VLMJudgeReward
from spatialrl.rewards import Reward, WeightedReward, compute_reward, reward_components
from spatialscore.benchmark import ScorerSpec, ScorerSpecError, build_scorer, parse_scorer_spec, run_benchmark
from spatialscore.chat import ChatEndpointError, EndpointConfig, RepliesRejectedError
from spatialscore.cli import main
from spatialscore.data.synthetic import RuleChecker
from spatialscore.judges import PairwiseJudge, PointwiseJudge

RULE = RuleChecker()


@pytest.fixture
def chat_stub():
    yield from serve_stubs()


def decode(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def prompt_of(body: dict) -> str:
    return re.search(r"Prompt: (.*)", last_user_text(body)).group(1)


def rule_scores(body: dict) -> list[float]:
    images = [decode(u) for u in images_of(body)]
    return RULE(images=images, prompts=[prompt_of(body)] * len(images))


def pointwise_stub(body: dict) -> str:
    (score,) = rule_scores(body)
    return json.dumps({"score": 1 + round(9 * score), "reason": "checked"})


def pairwise_stub(body: dict) -> str:
    first, second = rule_scores(body)
    return json.dumps({"better": 2 if second > first else 1})  # ties go to the first: position-biased


def stub_endpoint(url: str, **options) -> EndpointConfig:
    return EndpointConfig(base_url=url, model="stub-vlm", cache=False, **options)


def judge(kind, url: str, **options):
    return kind(endpoint=stub_endpoint(url, **options))


def square(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (8, 8), colour)


def test_pointwise_sends_images_and_parses_scores(chat_stub):
    stub = chat_stub(lambda body: json.dumps({"score": 1 + decode(images_of(body)[0]).getpixel((0, 0))[0] // 28}))
    scores = judge(PointwiseJudge, stub.url, seed=3)(
        prompts=["a red square", "a dark square"], images=[square((250, 0, 0)), square((10, 0, 0))]
    )
    assert scores == [9.0, 1.0] and stub.count == 2
    body = stub.bodies[0]
    assert body["seed"] == 3 and body["temperature"] == 0.0 and body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system" and "1-10" in body["messages"][0]["content"]


def test_pointwise_rejects_bad_replies_and_then_fails_naming_endpoint_and_prompt(chat_stub):
    replies = iter(["ten", '{"score": 11}', '{"score": 7.0}'])
    stub = chat_stub(lambda body: next(replies))
    assert judge(PointwiseJudge, stub.url)(prompts=["p"], images=[square((0, 0, 0))]) == [7.0]
    assert "not valid JSON" in last_user_text(stub.bodies[1]) and "got 11" in last_user_text(stub.bodies[2])
    stub.responder = lambda body: '{"score": "high"}'
    with pytest.raises(RepliesRejectedError, match=r"3 replies for prompt 'a cat left of a dog' rejected") as error:
        judge(PointwiseJudge, stub.url)(prompts=["a cat left of a dog"], images=[square((0, 0, 0))])
    assert stub.url in str(error.value)


def test_pairwise_asks_both_orders_and_cancels_position_bias(chat_stub):
    good, bad = square((200, 0, 0)), square((0, 0, 200))
    always_first = chat_stub(lambda body: '{"better": 1}')
    preference = judge(PairwiseJudge, always_first.url).compare(
        prompts=["p", "q"], first=[good, bad], second=[bad, good]
    )
    assert preference == [0.5, 0.5]  # a judge that always names image 1 gives ties, not a biased answer
    assert always_first.count == 4
    orders = [tuple(decode(u).getpixel((0, 0)) for u in images_of(b)) for b in always_first.bodies]
    assert sorted(orders) == sorted([((200, 0, 0), (0, 0, 200)), ((0, 0, 200), (200, 0, 0))] * 2)

    def sees_red(body: dict) -> str:
        first, second = (decode(u).getpixel((0, 0))[0] for u in images_of(body))
        return json.dumps({"better": 1 if first > second else 2})

    faithful = chat_stub(sees_red)
    assert judge(PairwiseJudge, faithful.url).compare(prompts=["p", "q"], first=[good, bad], second=[bad, good]) == [
        1.0,
        0.0,
    ]


@pytest.fixture
def manifest(tmp_path):
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "synth"),
                "--num-pairs",
                "6",
                "--seed",
                "0",
                "--image-size",
                "64",
                "--stages",
                "1",
                "3",
                "--split",
                "test",
                "--no-progress",
            ]
        )
        == 0
    )
    return tmp_path / "synth" / "test.jsonl"


def test_benchmark_runs_judges_end_to_end(chat_stub, manifest, tmp_path, capsys):
    point = chat_stub(lambda body: StubReply(content=pointwise_stub(body), delay=0.1))
    pair = chat_stub(pairwise_stub)
    cache = tmp_path / "cache"
    argv = [
        "benchmark", "--pairs", str(manifest), "--no-progress", "--bootstrap", "0",
        "--scorer", f"judge:pointwise,model=stub-vlm,base_url={point.url},cache_dir={cache},concurrency=3",
        "--scorer", f"pair=judge:pairwise,model=stub-vlm,base_url={pair.url},cache_dir={cache}",
        "--scorer", "rule",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "bench")]) == 0
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    accuracy = {name: s["overall"]["accuracy"] for name, s in results["scorers"].items()}
    assert set(accuracy) == {"pointwise:stub-vlm", "pair", "rule"}
    assert accuracy["pointwise:stub-vlm"] == accuracy["rule"] == accuracy["pair"] == 1.0
    n = results["num_pairs"]
    assert pair.count == 2 * n  # both orders of every pair
    assert point.count == results["num_queries"] and point.max_in_flight == 3
    scores = [json.loads(line)["scores"]["pair"] for line in (tmp_path / "bench" / "scores.jsonl").open()]
    assert all(s == {"chosen": 1.0, "rejected": 0.0} for s in scores)
    # a second run is answered from the cache
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert (point.count, pair.count) == (results["num_queries"], 2 * n)
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert {k: v["overall"] for k, v in again["scorers"].items()} == {
        k: v["overall"] for k, v in results["scorers"].items()
    }
    capsys.readouterr()


def test_benchmark_fails_loudly_when_the_judge_endpoint_fails(chat_stub, manifest):
    down = chat_stub(lambda body: StubReply(status=500))
    scorer = build_scorer(parse_scorer_spec(f"judge:pointwise,model=m,base_url={down.url},retries=0,cache=false"))
    with pytest.raises(ChatEndpointError, match=re.escape(down.url) + r".*for prompt '.+' after 1 attempt"):
        run_benchmark(manifest=manifest, scorers={"judge": scorer}, show_progress=False, bootstrap=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("judge:sideways,model=m,base_url=http://127.0.0.1:1/v1", "judge mode must be one of"),
        ("judge:pointwise,model=m", "needs base_url=..."),
        ("judge:pairwise,model=m,base_url=http://127.0.0.1:1/v1,api_key=sk-1", "environment only"),
        ("judge:pointwise,model=m,base_url=http://127.0.0.1:1/v1,concurrency=0", "concurrency must be"),
        ("judge:pointwise,model=m,base_url=http://127.0.0.1:1/v1,attempts=0", "attempts must be"),
    ],
)
def test_bad_judge_specs(spec, message):
    with pytest.raises(ScorerSpecError, match=message):
        parse_scorer_spec(spec)


def test_flat_judge_options_build_the_endpoint_and_unknown_ones_are_refused_by_name():
    flat = "pointwise,model=m,base_url=http://127.0.0.1:1/v1,concurrency=3,timeout=5,attempts=2,cache=false"
    spec = parse_scorer_spec(f"j=judge:{flat}")
    assert spec.name == "j"
    built = build_scorer(spec)
    assert isinstance(built, PointwiseJudge) and built.attempts == 2
    assert built.endpoint == EndpointConfig(
        base_url="http://127.0.0.1:1/v1", model="m", concurrency=3, timeout=5, cache=False
    )
    with pytest.raises(ScorerSpecError, match="unknown option 'colour'"):  # refused before anything loads
        parse_scorer_spec(f"j=judge:{flat},colour=red")
    with pytest.raises(ScorerSpecError, match="unknown option 'colour'"):  # and when built
        build_scorer(ScorerSpec("j", "judge", f"{flat},colour=red"))


def brightness_stub(body: dict) -> str:
    mean = float(np.asarray(decode(images_of(body)[0])).mean()) / 255
    return json.dumps({"score": 1 + round(9 * mean)})


class Constant(Reward):
    def __init__(self, *, value: float = 1.0, name: str = "constant") -> None:
        self.value, self.name = value, name

    def __call__(self, *, images, prompts, metadata=None):
        return torch.full((images.shape[0],), self.value)


def test_reward_in_a_weighted_sum(chat_stub):
    stub = chat_stub(brightness_stub)
    images = torch.stack([torch.full((3, 8, 8), v) for v in (0.0, 1.0, 5 / 9)])
    vlm = VLMJudgeReward(endpoint=stub_endpoint(stub.url, concurrency=2))
    total = WeightedReward(rewards=[vlm, Constant()], weights=[2.0, 0.5])
    parts = reward_components(total, images=images, prompts=["dark", "bright", "grey"])
    assert torch.allclose(parts["vlm_judge"], torch.tensor([0.0, 1.0, 5 / 9]))
    assert torch.allclose(parts["weighted"], 2 * parts["vlm_judge"] + 0.5)
    assert stub.count == 3
    again = pickle.loads(pickle.dumps(vlm))  # the HTTP client is made again after unpickling
    assert torch.equal(compute_reward(again, images=images, prompts=["dark", "bright", "grey"]), parts["vlm_judge"])


def test_reward_failure_fails_the_step_naming_endpoint_and_prompt(chat_stub):
    down = chat_stub(lambda body: StubReply(status=503))
    reward = VLMJudgeReward(endpoint=stub_endpoint(down.url, retries=0))
    with pytest.raises(ChatEndpointError, match=re.escape(down.url) + r".*'a red circle left of a blue square'"):
        compute_reward(reward, images=torch.zeros(1, 3, 8, 8), prompts=["a red circle left of a blue square"])
    nonsense = chat_stub(lambda body: '{"score": null}')
    reward = VLMJudgeReward(endpoint=stub_endpoint(nonsense.url), attempts=2)
    with pytest.raises(RepliesRejectedError, match="2 replies for prompt 'p' rejected"):
        compute_reward(reward, images=torch.zeros(1, 3, 8, 8), prompts=["p"])
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        VLMJudgeReward(endpoint=EndpointConfig(base_url=down.url, model="stub-vlm", concurrency=0))
    with pytest.raises(ValueError, match="attempts must be an integer >= 1"):
        VLMJudgeReward(endpoint=stub_endpoint(down.url), attempts=0)


def test_reward_parses_from_yaml_inside_weighted_reward(tmp_path):
    text = f"""
model:
  reward:
    class_path: spatialrl.rewards.WeightedReward
    init_args:
      weights: [1.0, 0.5]
      rewards:
        - class_path: spatialrl.rewards.StrictReward
        - class_path: spatialrl.judge_reward.VLMJudgeReward
          init_args:
            endpoint: {{base_url: http://127.0.0.1:8000/v1, model: Qwen/Qwen2.5-VL-7B-Instruct, concurrency: 16,
                        cache_dir: {tmp_path}}}
            attempts: 2
"""
    config = yaml.safe_load(text)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model.reward", type=Reward)  # as a LightningModule's ``reward: Reward`` argument
    reward = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).model.reward
    _, vlm = reward.rewards
    assert isinstance(vlm, VLMJudgeReward) and vlm.judge.endpoint.concurrency == 16
    assert vlm.judge.endpoint.base_url == "http://127.0.0.1:8000/v1" and reward.component_names()[-1] == "vlm_judge"
    assert vlm.judge.chat.config.cache_dir == str(tmp_path) and vlm.judge.attempts == 2
    endpoint = config["model"]["reward"]["init_args"]["rewards"][1]["init_args"]["endpoint"]
    endpoint["concurrency"] = 0  # checked when instantiated, naming the field
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        parser.instantiate(parser.parse_string(yaml.safe_dump(config)))
