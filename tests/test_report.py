"""The capacity-planning report: plan parsing, the charts' numbers, and a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lorasize import LoraSpec, ServeSpec, estimate
from lorasize.errors import LorasizeError
from lorasize.plan.report import build_figures, load_plan, write_report

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "plan.yaml"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    charts = write_report(load_plan(PLAN), out)
    return out, charts


def test_example_plan_exercises_every_chart(report_file):
    out, charts = report_file
    assert charts == 8
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js is embedded: opens offline
    assert "Plotly.newPlot" in page
    for title in ("Training memory by component", "Memory against sequence length",
                  "Largest batch at 2048 tokens per GPU", "Largest sequence at batch 1 per GPU",
                  "Training throughput per GPU", "Adapters resident per GPU",
                  "Hit rate against resident slots", "Estimate against measurement"):
        assert title in page
    assert "(GiB)" in page


def test_the_page_has_numbers_a_verdict_and_its_assumptions(report_file):
    """A table per GPU (fits, headroom, largest batch and sequence, adapters, throughput, hours
    and cost) computed with the same calls as the commands, and the assumptions with the
    version."""
    from lorasize import LoraSpec, __version__
    from lorasize.perf.timing import training_time
    from lorasize.plan.solve import solve

    out, _ = report_file
    page = out.read_text()
    table = page[page.index("<table id='summary'"):page.index("</table>")]
    plan = load_plan(PLAN)
    lora = LoraSpec(r=plan.ranks[0], targets=plan.target_sets[0])
    for gpu in plan.gpus:
        e = estimate(plan.model, lora, plan.train, gpu)
        row = table[table.index(f"<td>{gpu.name}</td>"):].split("</tr>")[0]
        assert ("<td>yes</td>" if e.fits else "<td>no</td>") in row
        assert f"<td>{solve(plan.model, lora, plan.train, gpu, 'batch-size')[0]:,}</td>" in row
        timed = training_time(plan.model, e.targets, plan.train, gpu,
                              dataset_tokens=plan.dataset_tokens,
                              usd_per_gpu_hour=plan.usd_per_gpu_hour[gpu.name])
        assert f"{timed.tokens_per_s:,.0f}" in row and f"${timed.usd:,.0f}" in row
    assert f"lorasize {__version__}" in page and "id='assumptions'" in page


def test_charts_use_the_same_numbers_as_estimate():
    plan = load_plan(PLAN)
    figures = build_figures(plan)
    adapters = next(f for f in figures if "Adapters resident" in f.layout.title.text).data[0]
    for gpu, shown in zip(plan.gpus, adapters.y):
        direct = estimate(plan.model, plan.serve_lora, plan.train, gpu, plan.serve)
        assert shown == direct.adapters_fit


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("model: [unclosed", "line"),
    ("gpus: [a100-40gb]\n", "model"),
    ("model: llama2-7b\ngpus: []\n", "gpus"),
    ("model: llama2-7b\ngpus: [a100-40gb]\ntraining:\n  ranks: [0]\n", "training.ranks"),
    ("model: llama2-7b\ngpus: [a100-40gb]\ntraining:\n  warp: 9\n", "training.warp"),
    ("model: llama2-7b\ngpus: [a100-40gb]\ntraining:\n  padded: sure\n", "training.padded"),
    ("model: llama2-7b\ngpus: [a100-40gb]\ntraining:\n  seq_len: long\n", "training.seq_len"),
    ("model: llama2-7b\ngpus: [a100-40gb]\ntraining:\n  bnb_release: 9.9\n", "--bnb-release"),
    ("model: llama2-7b\ngpus: [a100-40gb]\nserving:\n  adapters: 0\n", "serving.adapters"),
    ("model: llama2-7b\ngpus: [nope-gpu]\n", "nope-gpu"),
])
def test_bad_plans(tmp_path, cli, text, fragment):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    with pytest.raises(LorasizeError, match=re.escape(fragment)):
        load_plan(plan)
    code, _, err = cli("report", str(plan), "--out", str(tmp_path / "r.html"))
    assert code == 2 and str(plan) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_cli_writes_atomically(tmp_path, cli):
    out = tmp_path / "report.html"
    out.write_text("previous report")
    code, stdout, _ = cli("report", str(PLAN), "--out", str(out))
    assert code == 0 and "8 charts" in stdout
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left behind


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_renders_in_headless_chromium(report_file, tmp_path):
    out, charts = report_file
    browser = _chromium()
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'a'}",
                          "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
    assert attributes == {"plots": str(charts), "plots-rendered": str(charts), "js-errors": "0"}
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'b'}",
                    "--hide-scrollbars", "--window-size=1200,2600", f"--screenshot={shot}",
                    out.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000


@pytest.mark.parametrize("text,fragment", [
    ("model: llama2-7b\ngpus: [a100-40gb]\ndataset_tokens: -5\n", "dataset_tokens"),
    ("model: llama2-7b\ngpus: [a100-40gb]\nusd_per_gpu_hour: {a100-40gb: 0}\n", "usd_per_gpu_hour"),
    ("model: llama2-7b\ngpus: [a100-40gb]\nusd_per_gpu_hour: {warp-9: 1}\n", "warp-9"),
])
def test_bad_time_fields(tmp_path, text, fragment):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    with pytest.raises(LorasizeError, match=re.escape(fragment)):
        load_plan(plan)


def test_validation_points_are_computed_not_pasted(tmp_path, published):
    """The plan names measurement ids; the estimates are computed now (a pasted number would go
    stale when the model improves)."""
    plan = load_plan(PLAN)
    computed = published
    assert [p["estimate_bytes"] for p in plan.validation] == [
        computed["mc-01"].predicted, computed["mc-03"].predicted]
    assert [p["measured_bytes"] for p in plan.validation] == [
        computed["mc-01"].measured, computed["mc-03"].measured]
    bar = tmp_path / "bar.yaml"
    bar.write_text("model: llama2-7b\ngpus: [a100-40gb]\nvalidation: bar\n")
    assert len(load_plan(bar).validation) >= 30
    for text, fragment in (("validation: [nope-1]\n", "nope-1"),
                           ("validation: [{name: x, estimate_bytes: 1, measured_bytes: 2}]\n",
                            "measurement ids")):
        bad = tmp_path / "bad.yaml"
        bad.write_text("model: llama2-7b\ngpus: [a100-40gb]\n" + text)
        with pytest.raises(LorasizeError, match=re.escape(fragment)):
            load_plan(bad)


def test_the_sequence_chart_marks_the_models_positions(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("model: gpt2\ngpus: [a100-40gb]\ntraining:\n  seq_lens: [512, 1024, 4096]\n")
    figures = build_figures(load_plan(plan))
    chart = next(f for f in figures if f.layout.title.text == "Memory against sequence length")
    notes = [a.text for a in chart.layout.annotations]
    assert "gpt2 was trained for 1,024 positions" in notes
    plan.write_text("model: gpt2\ngpus: [a100-40gb]\ntraining:\n  seq_lens: [512, 1024]\n")
    chart = next(f for f in build_figures(load_plan(plan))
                 if f.layout.title.text == "Memory against sequence length")
    assert not any("positions" in (a.text or "") for a in chart.layout.annotations)


def test_a_plan_takes_the_estimates_training_flags(tmp_path):
    """autocast, kernels, padded, bnb_release, grad_accum and the adapters' training dtype are
    estimate flags a plan's training section passes on."""
    path = tmp_path / "plan.yaml"
    path.write_text("model: llama3-8b\ngpus: [a100-80gb]\ntraining:\n  autocast: false\n"
                    "  padded: true\n  kernels: fused\n  grad_accum: 4\n  bnb_release: 0.45\n"
                    "  adapter_train_dtype: bf16\n")
    train = load_plan(path).train
    assert (train.autocast, train.padded, train.kernels, train.grad_accum, train.bnb_release,
            train.adapter_train_dtype) == (False, True, "fused", 4, "0.45", "bf16")
