"""The pytest plugin, run for real through ``pytester``: a passing and a failing budget, stored
peaks updated and compared. On the CPU it measures with the trace tier's tracker on real tensors;
the CUDA backend runs only where a GPU is visible."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest
import torch

@pytest.mark.memory_budget("1 MiB")
def test_small(lorasize_memory):
    x = torch.zeros(1024, 64)          # 256 KiB
    y = x * 2                          # 256 KiB

@pytest.mark.memory_budget("1 MiB")
def test_too_big(lorasize_memory):
    x = torch.zeros(1024, 1024)        # 4 MiB

def test_step(lorasize_memory):
    model = torch.nn.Linear(256, 256)
    lorasize_memory.track(model)
    optimizer = torch.optim.AdamW(model.parameters())
    loss = model(torch.randn(32, 256)).sum()
    lorasize_memory.phase("backward")
    loss.backward()
    lorasize_memory.phase("optimizer")
    optimizer.step()
"""


@pytest.fixture(scope="module", autouse=True)
def _torch_loaded_before_pytester():
    """pytester runs in this process and, after each run, drops the modules imported since the
    test started; torch cannot be imported twice. So import here, before any pytester, what the
    inner tests use (AdamW's step imports torch._dynamo)."""
    try:
        import torch

        import lorasize.trace.tracker  # noqa: F401
    except ImportError:
        return
    model = torch.nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    torch.optim.AdamW(model.parameters()).step()


def _needs_tracker():
    pytest.importorskip("torch")
    pytest.importorskip("lorasize.trace.tracker")


def test_registered_through_the_pytest11_entry_point():
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("lorasize") == "lorasize.ci.pytest_plugin"


def test_marker_passes_and_fails_with_the_breakdown(pytester):
    _needs_tracker()
    pytester.makepyfile(test_budget=TESTS)
    result = pytester.runpytest("--lorasize-backend", "tracker", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*memory budget exceeded: peak 4.00 MiB (4,194,304 bytes) > budget 1 MiB ?tracker?*",
        "*breakdown at the peak:*",
        "*activations*4,194,304*4.00 MiB*",
        "FAILED test_budget.py::test_too_big*",
    ])


def test_stored_peaks_update_and_regression(pytester):
    _needs_tracker()
    pytester.makepyfile(test_budget=TESTS)
    peaks = pytester.path / "peaks.json"
    args = ["--lorasize-backend", "tracker", "--lorasize-baseline", str(peaks), "-p",
            "no:cacheprovider"]
    pytester.runpytest(*args, "--lorasize-update").assert_outcomes(passed=2, failed=1)
    stored = json.loads(peaks.read_text())["peaks"]
    assert stored["test_budget.py::test_small"] == {"tracker": 512 * 1024}
    assert stored["test_budget.py::test_step"]["tracker"] > 3 * 256 * 256 * 4  # weights, grads, 2 moments
    assert sorted(p.name for p in pytester.path.iterdir() if p.name.startswith(".peaks"))== []

    pytester.runpytest(*args).assert_outcomes(passed=2, failed=1)  # same peaks: only the budget
    pytester.makepyfile(test_budget=TESTS.replace("y = x * 2 ", "y = x * 2; z = x + 1"))
    result = pytester.runpytest(*args, "-k", "small")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(["*memory regression: peak 768.00 KiB is +50.00% over the stored "
                                 "512.00 KiB (tolerance 1%*--lorasize-update to accept it*"])
    result = pytester.runpytest(*args, "-k", "small", "--lorasize-update")
    result.assert_outcomes(passed=1, deselected=2)
    stored = json.loads(peaks.read_text())["peaks"]
    assert stored["test_budget.py::test_small"] == {"tracker": 768 * 1024}
    assert "test_budget.py::test_step" in stored  # tests not run this time keep their peaks


def test_usage_errors(pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest("--lorasize-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lorasize-update needs --lorasize-baseline FILE*"])
    (pytester.path / "bad.json").write_text("[1]")
    result = pytester.runpytest("--lorasize-baseline", "bad.json")
    result.stderr.fnmatch_lines(["*--lorasize-baseline bad.json: not a lorasize peaks file*"])


def test_bad_marker_argument_fails_the_test(pytester):
    _needs_tracker()
    pytester.makepyfile(test_m="""
        import pytest
        @pytest.mark.memory_budget("lots")
        def test_m(lorasize_memory): pass
    """)
    result = pytester.runpytest("--lorasize-backend", "tracker")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*memory_budget: expected a size such as \"14 GiB\"*'lots'*"])


def test_cuda_backend(pytester):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytester.makepyfile(test_gpu="""
        import pytest, torch
        @pytest.mark.memory_budget("8 MiB")
        def test_ok(lorasize_memory):
            x = torch.zeros(1024, 1024, device="cuda")          # 4 MiB
        @pytest.mark.memory_budget("8 MiB")
        def test_over(lorasize_memory):
            x = torch.zeros(4096, 1024, device="cuda")          # 16 MiB
    """)
    result = pytester.runpytest("--lorasize-backend", "cuda")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*memory budget exceeded: peak 16.00 MiB*?cuda?*"])
