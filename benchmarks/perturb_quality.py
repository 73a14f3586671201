"""Quality of the rule perturber on public text-to-image benchmark prompts (benchmarks/data/perturb_prompts).

    python benchmarks/perturb_quality.py
    git show fff5612:src/spatialscore/data/perturb.py > /tmp/perturb_old.py   # the engine before issue 13
    python benchmarks/perturb_quality.py --baseline /tmp/perturb_old.py   # adds the old engine's numbers
    python benchmarks/perturb_quality.py --previous OLD_RUN.json   # adds the current numbers of an earlier run

Runs the perturber with the ``spatialscore perturb`` semantics (:func:`perturb_prompts`, seed 0): ``--num 1``
on the short and templated prompts, ``--num 2-3`` on the long dense ones. Reports per source and per split
(hand-labelled ``dev`` / ``test``; ``all`` adds the unlabelled templated prompts; ``blind`` is the long dense set
added after the long-prompt fixes, not part of ``all``; no longer blind since its edits were hand-checked):

- coverage: perturbed prompts / prompts with a spatial relation (labelled ones: by their labels; unlabelled
  templated ones contain one by construction);
- validity: perturbed prompts whose edits pass :func:`check_perturbation`, and per edit kind, each edit
  checked on its own;
- agreement with the hand labels: precision and recall of the relation phrases the perturber finds (every
  candidate site, chosen or not) against the labelled phrases, matched by overlapping spans.

The same tables come for ``RulePerturber(verify=False)`` (the rules without the built-in validity filter, so
validity is not only by construction), and for the long prompts at ``--num 1`` as well. Writes
benchmarks/results/perturb_quality.{json,md} (``--out`` to change), and ``--edits FILE`` the perturbed records
for reading.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from spatialscore.data import perturb
from spatialscore.data.perturb_validity import _REL, check_perturbation

ROOT = Path(__file__).parent
DATA = ROOT / "data" / "perturb_prompts"
GROUP_NUM = {"short_position": "1", "templated_2d3d": "1", "long_dense": "2-3"}  # the targets' modes
EXTRA_RUNS = [("long_dense", "1")]  # reported beside them, not part of the per-source tables
SWAP_LIKE = {"swap", "row_permute", "attribute_swap"}
SPLITS = ("dev", "test", "blind", "all")
ENGINES = ("baseline", "previous", "current")  # the columns, where present


def load_engine(path: str | None) -> ModuleType:
    """The perturb module: the installed one, or a copy at ``path`` (e.g. an older commit's file)."""
    if path is None:
        return perturb
    spec = importlib.util.spec_from_file_location("perturb_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def found_spans(rules: Any, prompt: str) -> list[tuple[int, int]]:
    """Relation phrases the rule perturber found: the span of each flip/predicate/anchor edit; for swaps and
    permutations, the relation phrases inside the edit (the whole edit when it names none)."""
    spans = set()
    for edit in rules.candidates(prompt):
        if edit.kind not in SWAP_LIKE:
            spans.add((edit.start, edit.end))
            continue
        inner = [(edit.start + m.start(), edit.start + m.end()) for m in _REL.finditer(edit.before)]
        spans.update(inner or [(edit.start, edit.end)])
    return sorted(spans)


def label_spans(row: dict) -> list[tuple[int, int]]:
    out = []
    for rel in row["relations"]:
        start = row["prompt"].index(rel["phrase"])
        out.append((start, start + len(rel["phrase"])))
    return out


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def evaluate(engine: ModuleType, rules: Any, prompts: list[dict], labels: dict[str, dict]) -> dict[str, Any]:
    """Per-prompt outcomes of one rule perturber: result or skip reason, validity, found and labelled spans."""
    out: dict[str, Any] = {}
    for group, num in [*GROUP_NUM.items(), *EXTRA_RUNS]:
        rows = [p for p in prompts if p["group"] == group]
        results, skipped = engine.perturb_prompts([r["prompt"] for r in rows], num=num, seed=0, perturber=rules)
        by_prompt = {res.prompt: res for res in results}
        reasons = {s.index: s.reason for s in skipped}
        for index, row in enumerate(rows):
            res = by_prompt.get(row["prompt"])
            label = labels.get(row["id"])
            rec: dict[str, Any] = {
                "source": row["source"],
                "group": group if num == GROUP_NUM[group] else f"{group} (--num {num})",
                "split": label["split"] if label else row.get("split", "unlabelled"),
                "has_relation": bool(label["relations"]) if label else True,
                "skip": reasons.get(index),
                "result": res,
            }
            if res is not None:
                rec["problems"] = check_perturbation(res.prompt, res.perturbed_prompt, res.edits)
                rec["edit_problems"] = [
                    (e.kind, check_perturbation(res.prompt, perturb.apply_edits(res.prompt, [e]), [e]))
                    for e in res.edits
                ]
            if label:
                found, wanted = found_spans(rules, row["prompt"]), label_spans(label)
                rec["tp_found"] = sum(any(_overlaps(f, w) for w in wanted) for f in found)
                rec["n_found"] = len(found)
                rec["tp_label"] = sum(any(_overlaps(w, f) for f in found) for w in wanted)
                rec["n_label"] = len(wanted)
            out[f"{row['id']}@{num}"] = rec
    return out


def summarise(recs: Sequence[dict]) -> dict[str, Any]:
    """Coverage, validity, per-kind validity and label agreement of a set of prompt outcomes."""
    with_rel = [r for r in recs if r["has_relation"]]
    done = [r for r in with_rel if r["result"] is not None]
    valid = [r for r in done if not r["problems"]]
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in done:
        for kind, problems in r["edit_problems"]:
            kinds[kind][0] += 1
            kinds[kind][1] += not problems
    labelled = [r for r in recs if "n_label" in r]
    n_found = sum(r["n_found"] for r in labelled)
    n_label = sum(r["n_label"] for r in labelled)
    return {
        "prompts": len(recs),
        "with_relation": len(with_rel),
        "perturbed": len(done),
        "coverage": round(len(done) / len(with_rel), 3) if with_rel else None,
        "valid": len(valid),
        "validity": round(len(valid) / len(done), 3) if done else None,
        "edits_by_kind": {
            k: {"edits": n, "valid": v, "validity": round(v / n, 3)} for k, (n, v) in sorted(kinds.items())
        },
        "labelled": len(labelled),
        "precision": round(sum(r["tp_found"] for r in labelled) / n_found, 3) if n_found else None,
        "recall": round(sum(r["tp_label"] for r in labelled) / n_label, 3) if n_label else None,
        "skip_reasons": dict(Counter(r["skip"] for r in with_rel if r["skip"]).most_common()),
    }


def tables(outcomes: dict[str, Any]) -> dict[str, Any]:
    """Summaries per split (dev, test, blind, all but blind) and per source and per group."""
    recs = list(outcomes.values())
    groups = list(dict.fromkeys(r["group"] for r in recs))
    out: dict[str, Any] = {}
    for split in SPLITS:
        chosen = [r for r in recs if (r["split"] != "blind" if split == "all" else r["split"] == split)]
        main = [r for r in chosen if r["group"] in GROUP_NUM]
        out[split] = {
            "by_source": {
                s: summarise([r for r in main if r["source"] == s]) for s in sorted({r["source"] for r in recs})
            },
            "by_group": {g: summarise([r for r in chosen if r["group"] == g]) for g in groups},
        }
    return out


_EMPTY = dict.fromkeys(("coverage", "validity", "precision", "recall")) | dict.fromkeys(
    ("perturbed", "valid", "with_relation"), 0
)
"""The summary cells of a group an earlier run did not have."""


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(report: dict[str, Any]) -> str:
    engines = [k for k in ENGINES if k in report]
    rules = report["rules_alone"]
    lines = [
        "# Rule perturber on public benchmark prompts",
        "",
        "`python benchmarks/perturb_quality.py"
        + (" --baseline OLD_perturb.py" if "baseline" in report else "")
        + (" --previous OLD_RUN.json" if "previous" in report else "")
        + "`",
        f"({report['prompts']} prompts, {report['labelled']} hand-labelled; `--num 1` on short/templated, "
        "`--num 2-3` on long dense; seed 0). Coverage = perturbed / with a relation; validity = perturbed prompts "
        "passing `check_perturbation`; P/R = relation phrases found vs hand labels. `blind` = long dense prompts "
        "added after the long-prompt fixes (not part of `all`); **no longer blind**: their edits were hand-checked "
        "and the stale-mention validity rules were written after reading them."
        + (f" `previous` = {report['previous_note']}." if "previous" in report else ""),
        "",
    ]
    for level in ("by_group", "by_source"):
        for split in SPLITS:
            lines += [f"## {split}, {level.replace('_', ' ')}", ""]
            head = "| " + ("group" if level == "by_group" else "source") + " | n | "
            head += " | ".join(f"{e} coverage | {e} validity | {e} P | {e} R" for e in engines) + " |"
            lines += [head, "|" + "---|" * (2 + 4 * len(engines))]
            for name in report["current"][split][level]:
                if not report["current"][split][level][name]["prompts"]:
                    continue  # e.g. no templated prompts in the blind split
                cells = []
                for e in engines:
                    s = report[e][split][level].get(name, _EMPTY)
                    cells += [
                        f"{_fmt(s['coverage'])} ({s['perturbed']}/{s['with_relation']})",
                        f"{_fmt(s['validity'])} ({s['valid']}/{s['perturbed']})",
                        _fmt(s["precision"]),
                        _fmt(s["recall"]),
                    ]
                n = report["current"][split][level][name]["prompts"]
                lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        "## Without the built-in verification (`RulePerturber(verify=False)`: the rules alone)",
        "",
        "| split | group | coverage | validity |",
        "|---|---|---|---|",
    ]
    for split in SPLITS:
        for name, s in rules[split]["by_group"].items():
            if not s["prompts"]:
                continue
            lines.append(
                f"| {split} | {name} | {_fmt(s['coverage'])} ({s['perturbed']}/{s['with_relation']}) | "
                f"{_fmt(s['validity'])} ({s['valid']}/{s['perturbed']}) |"
            )
    lines += [
        "",
        "## Edits by kind (all prompts but blind)",
        "",
        "| engine | kind | edits | valid |",
        "|---|---|---|---|",
    ]
    for e in engines:
        kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for s in report[e]["all"]["by_group"].values():
            for kind, k in s["edits_by_kind"].items():
                kinds[kind][0] += k["edits"]
                kinds[kind][1] += k["valid"]
        for kind, (n, v) in sorted(kinds.items()):
            lines.append(f"| {e} | {kind} | {n} | {v / n:.3f} ({v}/{n}) |")
    for split in ("all", "blind"):
        lines += ["", f"## Skip reasons ({split}, prompts with a relation)", ""]
        for e in engines:
            reasons: Counter[str] = Counter()
            for s in report[e][split]["by_group"].values():
                reasons.update(s["skip_reasons"])
            lines.append(f"- {e}: " + ("; ".join(f"{n} x {r}" for r, n in reasons.most_common()) or "none"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="path of an older perturb.py to compare with")
    parser.add_argument("--previous", type=Path, default=None, help="a report JSON of an earlier run to compare with")
    parser.add_argument("--note", default="an earlier run", help="what --previous is (printed in the report)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perturb_quality")
    parser.add_argument("--edits", type=Path, default=None, help="write the perturbed records (JSONL)")
    args = parser.parse_args(argv)
    prompts = [json.loads(line) for line in (DATA / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = {
        row["id"]: row for row in map(json.loads, (DATA / "labels.jsonl").read_text(encoding="utf-8").splitlines())
    }
    report: dict[str, Any] = {"prompts": len(prompts), "labelled": len(labels)}
    if args.previous is not None:
        report["previous"] = json.loads(args.previous.read_text(encoding="utf-8"))["current"]
        report["previous_note"] = args.note
    engines: dict[str, tuple[ModuleType, Any]] = {
        "current": (perturb, perturb.RulePerturber()),
        "rules_alone": (perturb, perturb.RulePerturber(verify=False)),
    }
    if args.baseline is not None:
        old = load_engine(args.baseline)
        engines = {"baseline": (old, old.RulePerturber()), **engines}
    for name, (engine, rules) in engines.items():
        outcomes = evaluate(engine, rules, prompts, labels)
        report[name] = tables(outcomes)
        if name == "current" and args.edits:
            with args.edits.open("w", encoding="utf-8") as fh:
                for pid, rec in outcomes.items():
                    res = rec["result"]
                    row = {"id": pid, "split": rec["split"], "skip": rec["skip"]}
                    if res is not None:
                        row |= {"perturbed_prompt": res.perturbed_prompt, "problems": rec["problems"]}
                        row["edits"] = [e.to_dict() for e in res.edits]
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
