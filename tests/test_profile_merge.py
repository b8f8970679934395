"""Merging profiles sent from many machines: read recursively, duplicates once, outliers and
broken files named, versions counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorasize.calibrate.merge import OUTLIER_ERROR, fingerprint, merge_profiles

# A profile the `profile` command wrote on a CPU (tiny llama, LoRA r=4, batch 2 x 32).
SHIPPED = Path(__file__).parent.parent / "profiles" / "tiny-llama-lora-r4-b2-s32-cpu-1795343799.json"


@pytest.fixture
def fleet(tmp_path):
    """Two machines' folders: one run sent by both, one outlier, one broken file."""
    a, b = tmp_path / "machine-a" / "runs", tmp_path / "machine-b"
    a.mkdir(parents=True)
    b.mkdir()
    shutil.copy(SHIPPED, a / "run1.json")
    shutil.copy(SHIPPED, b / "run1-again.json")  # the same run, sent twice
    odd = json.loads(SHIPPED.read_text())
    odd["measurements"]["peak_allocated_bytes"] *= 3  # something else shared the device
    odd["versions"]["torch"] = "2.99.0"
    (b / "odd.json").write_text(json.dumps(odd))
    (b / "notes.json").write_text('{"not": "a profile"}')
    return tmp_path


def test_the_merge_counts_each_run_once_and_names_what_it_leaves_out(fleet):
    merged = merge_profiles([str(fleet / "machine-a"), str(fleet / "machine-b")])
    status = {Path(r.path).name: r for r in merged.rows}
    assert status["run1.json"].status == "used"
    assert status["run1-again.json"].status == "duplicate"
    assert "run1.json" in status["run1-again.json"].detail
    assert status["odd.json"].status == "outlier" and abs(status["odd.json"].error) > OUTLIER_ERROR
    assert status["notes.json"].status == "rejected" and "missing field" in status["notes.json"].detail
    assert len(merged.profiles) == 1
    # the kept run's estimate is within the outlier bound; the versions are those of kept runs
    assert abs(status["run1.json"].error) < OUTLIER_ERROR
    assert "2.99.0" not in merged.versions["torch"]


def test_the_fingerprint_ignores_where_the_file_is_but_not_what_it_measured():
    profile = json.loads(SHIPPED.read_text())
    other = json.loads(SHIPPED.read_text())
    assert fingerprint(profile) == fingerprint(other)
    other["measurements"]["peak_allocated_bytes"] += 1
    assert fingerprint(profile) != fingerprint(other)


def test_calibrate_summary_prints_the_merge(fleet, cli):
    code, out, err = cli("calibrate", "--profiles", str(fleet / "machine-a"),
                         "--profiles", str(fleet / "machine-b"), "--summary")
    assert code == 0, err
    assert "4 profile files: 1 used, 1 duplicate, 1 outlier" in out
    assert "odd.json" in out and "outlier" in out
    code, out, err = cli("calibrate", "--profiles", str(fleet / "machine-b"), "--summary", "--json")
    data = json.loads(out)
    assert data["files"] == 3 and data["used"] == 1 and data["rejected"] == 1


def test_calibrate_without_out_or_summary_is_a_usage_error(fleet, cli):
    code, _, err = cli("calibrate", "--profiles", str(fleet / "machine-a"))
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("calibrate", "--summary")
    assert code == 2 and "--profiles" in err
