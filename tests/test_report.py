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
    assert charts == 6
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js is embedded: opens offline
    assert "Plotly.newPlot" in page
    for title in ("Training memory by component", "Memory against sequence length",
                  "Largest batch and sequence per GPU", "Adapters resident per GPU",
                  "Hit rate against resident slots", "Estimate against measurement"):
        assert title in page
    assert "(GiB)" in page


def test_charts_use_the_same_numbers_as_estimate():
    plan = load_plan(PLAN)
    figures = build_figures(plan)
    adapters = figures[3].data[0]
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
    assert code == 0 and "6 charts" in stdout
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
