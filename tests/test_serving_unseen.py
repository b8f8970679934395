"""Serving speed against published figures lorasize never saw while it was built
(serving_added.csv, lorasize.calibrate.serving_check), held to benchmarks/serving_accuracy.json;
and the two serving rules those figures needed: a paged KV pool runs the sequences it holds, and
throughput counts each request's prefill."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lorasize.calibrate.serving_check import print_report, report
from lorasize.measurements import SERVING, SERVING_ADDED

BAR = Path(__file__).resolve().parent.parent / "benchmarks" / "serving_accuracy.json"
GROWTH = 0.02  # two points


@pytest.fixture(scope="module")
def checked():
    return report(SERVING_ADDED)


def test_unseen_serving_errors_have_not_grown(capsys, checked):
    with capsys.disabled():  # the table, in every CI log
        print()
        print_report(checked)
    bar = json.loads(BAR.read_text())
    for kind in ("ratio", "absolute"):
        s = checked[f"{kind}_summary"]
        assert s["rows"] == bar[f"{kind}_rows"]
        assert s["median_abs_error"] <= bar[f"{kind}_median"] + GROWTH, kind
        assert s["p90_abs_error"] <= bar[f"{kind}_p90"] + GROWTH, kind


def test_unseen_serving_rows_come_from_other_sources(checked):
    def sources(path):
        with Path(path).open(newline="", encoding="utf-8") as handle:
            return {row["source"] for row in csv.DictReader(handle)}

    assert not sources(SERVING) & sources(SERVING_ADDED)
    assert not checked["unanswered"]  # every expressible row gets a figure
    # every figure quotes its source
    evidence = SERVING_ADDED.with_name("serving_added_evidence.md").read_text(encoding="utf-8")
    with SERVING_ADDED.open(newline="", encoding="utf-8") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert len(ids) == len(set(ids)) and all(f"\n## {i}\n" in evidence for i in ids)


def test_a_batch_one_rate_faster_than_the_bandwidth_is_named(checked):
    """LoRAX issue #333's base rate, 69 tokens/s of Mistral-7B in fp16 on an L40S, reads 14.5 GB
    of weights 69 times a second: 1,000 GB/s on a card of 864."""
    assert checked["implausible"] == ["lorax333-base"]


def test_a_paged_engine_runs_the_sequences_its_pool_holds(cli):
    """vLLM asked for 256 sequences of 640 tokens on an A100-80GB: the pool holds fewer; its
    scheduler runs those and queues the rest, so the speed is the speed at what it holds. PEFT's
    generate reserves its cache for the whole batch: no figure."""
    args = ["serve", "-m", "llama2-7b", "-r", "8", "-t", "attn", "-g", "a100-80gb",
            "--engine", "vllm", "--dtype", "fp16", "--max-seq-len", "640", "--concurrency",
            "256", "--batch", "256", "--prompt-tokens", "246", "--output-tokens", "235",
            "--json"]
    code, out, err = cli(*args)
    assert code == 1 and "does not fit" in err  # the asked reservation does not fit
    perf = json.loads(out)["performance"]
    note = next(n for n in perf["notes"] if "KV pool holds" in n)
    held = int(note.split("holds ")[1].split()[0])
    assert 150 < held < 256 and f"batch_{held}" in perf["decode_ms_per_token"]
    _, out, _ = cli(*[a if a != "vllm" else "peft" for a in args])
    assert json.loads(out)["performance"] is None  # PEFT reserves the cache: no pool


def test_throughput_counts_each_requests_prefill():
    from lorasize import LoraSpec, gpu_from_catalog, resolve_model
    from lorasize.arch.lora import resolve_targets
    from lorasize.perf.inference import serving_performance

    spec = resolve_model("llama2-7b")
    targets = resolve_targets(spec, LoraSpec(r=8, targets=("attn",)))
    kw = dict(engine="vllm", concurrency=64, prompt_tokens=2048, context=2100)

    def run(output):
        return serving_performance(spec, targets, gpu_from_catalog("a100-80gb"),
                                   output_tokens=output, **kw)

    short, long = run(8), run(1024)
    # the decode step is the same; eight tokens a request pay a 2,048-token prefill each
    assert short.decode_ms_per_token == long.decode_ms_per_token
    assert short.throughput_tokens_per_s["base"] < 0.5 * long.throughput_tokens_per_s["base"]
    step = long.decode_ms_per_token.get("batch_64")
    assert step is None or step["base"] > 0
