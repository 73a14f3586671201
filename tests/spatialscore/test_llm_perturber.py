"""The LLM perturber and the perturbation verifier against an OpenAI-compatible stub on 127.0.0.1."""

from __future__ import annotations

import json
import random

import pytest
from chat_stub import StubReply, last_user_text, serve_stubs

from spatialscore.chat import EndpointConfig
from spatialscore.cli import main
from spatialscore.data.llm_perturb import LLMPerturber
from spatialscore.data.perturb import Edit, PerturbationError, load_perturber, perturb_prompts
from spatialscore.data.verify_perturbations import verify_file, verify_record


@pytest.fixture
def chat_stub():
    yield from serve_stubs()


def reply(perturbed: str, *edits: tuple) -> str:
    """A perturber reply; each edit is (kind, before, after) or (kind, before, after, occurrence)."""
    rows = [dict(zip(("kind", "before", "after", "occurrence"), edit, strict=False)) for edit in edits]
    return json.dumps({"perturbed_prompt": perturbed, "edits": rows})


def task(body: dict) -> dict:
    """The perturbation request of a stub call (its first user message)."""
    return json.loads(next(m["content"] for m in body["messages"] if m["role"] == "user"))


def perturber(url: str, *, attempts: int = 3, **options) -> LLMPerturber:
    endpoint = EndpointConfig(base_url=url, model="stub-llm", cache=False, **options)
    return LLMPerturber(endpoint=endpoint, attempts=attempts)


CUP = "a cup to the left of a vase"
TWO = "a lamp above a desk, a cat left of a dog"
# Every kind of invalid reply; each must be rejected, answered with its problem, and finally skipped.
BAD_REPLIES = {
    "invalid JSON": (CUP, 1, "Sure! The new prompt is: a cup to the right of a vase", "not valid JSON"),
    "not an object": (CUP, 1, '["a cup to the right of a vase"]', "must be a JSON object"),
    "no edits": (CUP, 1, json.dumps({"perturbed_prompt": CUP}), '"edits" must be a non-empty list'),
    "spans do not reproduce": (
        CUP,
        1,
        reply("a cup to the right of a big vase", ("flip", "left", "right")),
        "applying the edits does not give perturbed_prompt",
    ),
    "before not in prompt": (
        CUP,
        1,
        reply(CUP, ("flip", "left side", "right side")),
        "does not occur in the prompt",
    ),
    "ambiguous before": (
        "a cup left of a vase and a jar left of a box",
        1,
        reply("a cup right of a vase and a jar left of a box", ("flip", "left", "right")),
        'occurs 2 times in the prompt; give "occurrence"',
    ),
    "overlapping edits": (
        CUP,
        2,
        reply(
            "a cup to the right of a vase",
            ("flip", "to the left", "to the right"),
            ("flip", "left of", "right of"),
        ),
        "do not fit together",
    ),
    "wrong edit count": (
        TWO,
        1,
        reply("a lamp below a desk, a cat right of a dog", ("flip", "above", "below"), ("flip", "left", "right")),
        "2 edits, 1 requested",
    ),
    "unknown kind": (
        CUP,
        1,
        reply("a cup to the right of a vase", ("rewrite", "left", "right")),
        "edit kind 'rewrite'",
    ),
    "object renamed (validity rule)": (
        CUP,
        1,
        reply("a mug to the left of a vase", ("flip", "cup", "mug")),
        "words other than relation words changed",
    ),
    "flip that changes nothing (validity rule)": (
        "a phone in front of a phone",
        1,
        reply("a phone behind a phone", ("flip", "in front of", "behind")),
        "the arrangement does not change",
    ),
    "idiom edited (validity rule)": (
        "a man under the weight of a bag",
        1,
        reply("a man above the weight of a bag", ("flip", "under", "above")),
        "non-spatial phrase",
    ),
    "framing text dragged into a swap (validity rule)": (
        "a photo of a fork above a hair drier",
        1,
        reply(
            "a hair drier above a photo of a fork",
            ("swap", "a photo of a fork above a hair drier", "a hair drier above a photo of a fork"),
        ),
        "framing text moved",
    ),
    "skip with a wrong count": (CUP, 1, json.dumps({"skip": "none", "available": 5}), '"available" must be'),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_every_invalid_reply_is_rejected_with_feedback_then_skipped(chat_stub, case):
    prompt, num, bad, problem = BAD_REPLIES[case]
    stub = chat_stub(lambda body: bad)
    results, skipped = perturb_prompts(
        [prompt], num="1" if num == 1 else "2-3", seed=0, perturber=perturber(stub.url, attempts=2)
    )
    assert results == []  # nothing unverified reaches the output
    (skip,) = skipped
    assert skip.reason.startswith("2 LLM replies rejected; last: ") and problem in skip.reason
    assert stub.count == 2
    assert problem in last_user_text(stub.bodies[1])  # the problems went back as feedback
    assert [m["role"] for m in stub.bodies[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert stub.bodies[1]["messages"][2]["content"] == bad


def test_a_rejected_reply_is_corrected_on_feedback(chat_stub):
    replies = iter(["not json at all", reply("a cup to the right of a vase", ("flip", "left", "right"))])
    stub = chat_stub(lambda body: next(replies))
    result = perturber(stub.url)(CUP, num=1, rng=random.Random(0))
    assert result.perturbed_prompt == "a cup to the right of a vase"
    assert result.edits == [Edit("flip", 13, 17, "left", "right")] and result.subset == "1-pert"
    assert stub.count == 2 and "not valid JSON" in last_user_text(stub.bodies[1])
    first = task(stub.bodies[0])
    assert first == {
        "prompt": CUP,
        "edits_requested": 1,
        "kinds_allowed": ["swap", "flip", "predicate", "anchor", "attribute_swap", "row_permute"],
    }


def test_occurrence_picks_the_repeated_phrase_and_swaps_span_objects(chat_stub):
    prompt = "a cup left of a vase and a jar left of a box"
    stub = chat_stub(
        lambda body: reply(
            "a cup left of a vase and a box left of a jar",
            ("swap", "a jar left of a box", "a box left of a jar", 1),
        )
    )
    result = perturber(stub.url)(prompt, num=1, rng=random.Random(0))
    assert result.edits == [Edit("swap", 25, 44, "a jar left of a box", "a box left of a jar")]
    stub.responder = lambda body: reply("a cup left of a vase and a jar right of a box", ("flip", "left", "right", 2))
    result = perturber(stub.url)(prompt, num=1, rng=random.Random(1))
    assert result.edits == [Edit("flip", 31, 35, "left", "right")]


def test_model_may_decline_and_two_or_three_falls_back(chat_stub):
    def answer(body: dict) -> str:
        if task(body)["prompt"] == "a quiet room":
            return json.dumps({"skip": "no spatial relation", "available": 0})
        if task(body)["edits_requested"] == 3:
            return json.dumps({"skip": "only two relations", "available": 2})
        return reply("a lamp below a desk, a cat right of a dog", ("flip", "above", "below"), ("flip", "left", "right"))

    stub = chat_stub(answer)
    results, skipped = perturb_prompts(
        [TWO, "a quiet room"] * 3, num="2-3", seed=0, perturber=perturber(stub.url, concurrency=2)
    )
    assert [r.num_perturbations for r in results] == [2, 2, 2] and all(r.subset == "2-3-pert" for r in results)
    assert [s.reason for s in skipped] == ["the model declined: no spatial relation"] * 3
    assert {task(b)["edits_requested"] for b in stub.bodies if task(b)["prompt"] == TWO} >= {2}


GOOD = {
    "a cup to the left of a vase": reply("a cup to the right of a vase", ("flip", "left", "right")),
    "a lamp above a desk": reply("a lamp below a desk", ("flip", "above", "below")),
    "a bowl in front of a jar": reply(
        "a jar in front of a bowl", ("swap", "a bowl in front of a jar", "a jar in front of a bowl")
    ),
}
NEVER_VALID = {
    "a photo of a fork above a hair drier": BAD_REPLIES["framing text dragged into a swap (validity rule)"][2],
    "a quiet room": json.dumps({"skip": "no spatial relation", "available": 0}),
}


def perturb_cli(tmp_path, stub, *extra: str) -> int:
    return main(
        [
            "perturb",
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--out",
            str(tmp_path / "out.jsonl"),
            "--perturber",
            "llm",
            "--perturber-option",
            f"base_url={stub.url}",
            "--perturber-option",
            "model=stub-llm",
            "--perturber-option",
            f"cache_dir={tmp_path / 'cache'}",
            "--perturber-option",
            "api_key_env=STUB_LLM_KEY",
            *extra,
        ]
    )


def test_cli_verified_output_concurrent_cached_and_resumable(chat_stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUB_LLM_KEY", "sk-llm-test")
    prompts = [*GOOD, *NEVER_VALID]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    answers = {**GOOD, **NEVER_VALID}
    stub = chat_stub(lambda body: StubReply(content=answers[task(body)["prompt"]], delay=0.2))
    assert perturb_cli(tmp_path, stub, "--perturber-option", "concurrency=2") == 0
    assert "3 of 5 prompts perturbed" in capsys.readouterr().err
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in out] == list(GOOD) and [r["id"] for r in out] == [1, 2, 3]
    assert [r["perturbed_prompt"] for r in out] == [json.loads(a)["perturbed_prompt"] for a in GOOD.values()]
    assert all(verify_record(r) == [] for r in out)  # every written line passes the verifier again
    skipped = [json.loads(line) for line in (tmp_path / "out.skipped.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in skipped] == list(NEVER_VALID)
    assert "framing text moved" in skipped[0]["reason"] and skipped[1]["reason"].endswith("no spatial relation")
    assert stub.count == 3 + 3 + 1  # the never-valid swap was asked 3 times (attempts)
    assert stub.max_in_flight == 2
    assert {h["authorization"] for h in stub.headers} == {"Bearer sk-llm-test"}
    first = (tmp_path / "out.jsonl").read_bytes()
    assert perturb_cli(tmp_path, stub, "--perturber-option", "concurrency=2") == 0  # a rerun: all from the cache
    assert stub.count == 7 and (tmp_path / "out.jsonl").read_bytes() == first
    seeds = {task(b)["prompt"]: b["seed"] for b in stub.bodies}
    assert perturb_cli(tmp_path, stub, "--seed", "1") == 0  # another seed asks again, with other seeds
    assert {task(b)["prompt"]: b["seed"] for b in stub.bodies[7:]}.items().isdisjoint(seeds.items())


def test_cli_errors(chat_stub, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a cup to the left of a vase\n", encoding="utf-8")
    down = chat_stub(lambda body: StubReply(status=503))
    assert perturb_cli(tmp_path, down, "--perturber-option", "retries=0") == 1
    err = capsys.readouterr().err
    assert down.url in err and "'a cup to the left of a vase'" in err and "HTTP 503" in err
    assert perturb_cli(tmp_path, down, "--perturber-option", "api_key=sk-secret") == 2
    assert "environment only" in capsys.readouterr().err
    assert perturb_cli(tmp_path, down, "--perturber-option", "concurrency=0") == 2
    assert "concurrency must be an integer >= 1" in capsys.readouterr().err
    assert perturb_cli(tmp_path, down, "--perturber-option", "colour=red") == 2
    assert "--perturber_option: unknown option 'colour'" in capsys.readouterr().err
    no_url = ["perturb", "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "o.jsonl")]
    assert main([*no_url, "--perturber", "llm", "--perturber-option", "model=m"]) == 2
    assert "--perturber_option needs base_url=..." in capsys.readouterr().err


def test_flat_options_build_the_endpoint_config(tmp_path):
    flat = {"base_url": "http://127.0.0.1:1/v1/", "model": "m", "concurrency": 2, "cache_dir": str(tmp_path)}
    made = load_perturber("llm", {**flat, "kinds": ["flip"], "attempts": 2})
    assert isinstance(made, LLMPerturber) and (made.kinds, made.attempts) == (("flip",), 2)
    assert made.endpoint == EndpointConfig(
        base_url="http://127.0.0.1:1/v1", model="m", concurrency=2, cache_dir=str(tmp_path)
    )
    assert made.chat.config is made.endpoint
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        LLMPerturber(endpoint=made.endpoint, kinds=["rewrite"])
    with pytest.raises(ValueError, match="attempts must be an integer >= 1"):
        LLMPerturber(endpoint=made.endpoint, attempts=0)


def test_declining_raises_perturbation_error_with_available(chat_stub):
    stub = chat_stub(lambda body: json.dumps({"skip": "nothing spatial", "available": 0}))
    with pytest.raises(PerturbationError, match="the model declined: nothing spatial") as error:
        perturber(stub.url)(CUP, num=1, rng=random.Random(0))
    assert error.value.available == 0 and stub.count == 1


def test_verify_perturbations_reports_each_line(tmp_path, capsys):
    flip = {"kind": "flip", "start": 13, "end": 17, "before": "left", "after": "right"}
    rows = [
        {
            "id": "a",
            "prompt": CUP,
            "perturbed_prompt": "a cup to the right of a vase",
            "num_perturbations": 1,
            "subset": "1-pert",
            "edits": [flip],
        },
        {"prompt": CUP, "perturbed_prompt": "a cup to the right of a vase"},  # another source: no edits
        {
            "id": "c",
            "prompt": CUP,
            "perturbed_prompt": "a cup to the right of a vase",
            "num_perturbations": 2,
            "subset": "2-3-pert",
            "edits": [flip],
        },
        {
            "id": "d",
            "prompt": CUP,
            "perturbed_prompt": "a cup to the right of a jar",
            "num_perturbations": 1,
            "edits": [flip],
        },
        "{not json",
        {"id": "f", "prompt": CUP, "perturbed_prompt": "a mug to the left of a vase"},
        {
            "id": "g",
            "prompt": CUP,
            "perturbed_prompt": "a cup to the right of a vase",
            "num_perturbations": 1,
            "subset": "2-3-pert",
            "edits": [flip],
        },
        {"id": "h", "prompt": CUP, "perturbed_prompt": "x", "edits": [{"kind": "flip", "start": "13"}]},
        {
            "id": "i",
            "prompt": CUP,
            "meta": {"edits": [flip]},
            "perturbed_prompt": "a cup to the right of a vase",
        },
    ]
    path = tmp_path / "external.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    code = main(
        [
            "verify-perturbations",
            str(path),
            "--report",
            str(tmp_path / "r.jsonl"),
            "--keep",
            str(tmp_path / "k.jsonl"),
        ]
    )
    assert code == 1
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert f"{path}:3 (id c): 1 edit, 2 requested" in printed
    assert f"{path}:4 (id d): applying the edits does not give the perturbed prompt" in printed
    assert any(line.startswith(f"{path}:5: invalid JSON") for line in printed)
    assert any(line.startswith(f"{path}:6 (id f): words other than relation words changed") for line in printed)
    assert f"{path}:7 (id g): subset '2-3-pert' does not match num_perturbations=1" in printed
    assert any(line.startswith(f"{path}:8 (id h): edits[0] needs start, end, before, after") for line in printed)
    assert not any(line.startswith((f"{path}:1 ", f"{path}:2:", f"{path}:9 ")) for line in printed)
    assert "3 of 9 records valid, 6 with problems" in captured.err
    kept = (tmp_path / "k.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line).get("id") for line in kept] == ["a", None, "i"]
    report = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["valid"] for r in report] == [True, True, False, False, False, False, False, False, True]
    strict = verify_file(path, num=(2, 3))
    assert strict[0].problems == ["1 edit, 2 or 3 requested"]
    assert main(["verify-perturbations", str(tmp_path / "missing.jsonl")]) == 2
