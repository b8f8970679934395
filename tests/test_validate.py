"""``validate`` reads measurement CSVs, predicts what it can and says why it skips the rest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lorasize import LoraSpec, TrainSpec, estimate, gpu_from_catalog, resolve_model
from lorasize.validate import REQUIRED_COLUMNS, summary, validate

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "measurements" / "measured.csv"


def _write(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REQUIRED_COLUMNS) + ["notes"])
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in REQUIRED_COLUMNS + ("notes",)})
    return path


BASE = dict(source="test", model="Llama-3.2-3B", task="train", stack="hf-peft", method="lora",
            base_precision="bf16", double_quant="", r="32", targets="q,v", optimizer="AdamW (torch)",
            batch_size="4", seq_len="768", grad_checkpointing="no", flash_attn="sdpa",
            gpu="L40S-48GB", num_gpus="1", metric="peak_reserved", unit="bytes", confidence="high")


def test_rows_are_predicted_with_the_estimator(tmp_path):
    direct = estimate(resolve_model("llama3.2-3b"), LoraSpec(r=32, targets=("qv",)),
                      TrainSpec(batch_size=4, seq_len=768), gpu_from_catalog("l40s"))
    path = _write(tmp_path / "m.csv", [
        dict(BASE, id="a", value=str(direct.reserved_bytes)),
        dict(BASE, id="b", value=str(direct.reserved_bytes * 1.1)),
        dict(BASE, id="c", value=str(direct.allocated_bytes / 2**30), unit="GiB", metric="peak_allocated"),
        dict(BASE, id="d", value="1", num_gpus="4"),
        dict(BASE, id="e", value="1", model="NotAModel-9B"),
        dict(BASE, id="f", value="1", metric="estimate"),
    ])
    rows = {r.id: r for r in validate(path)}
    assert rows["a"].rel_error == 0
    assert rows["b"].rel_error == pytest.approx(1 / 1.1 - 1, rel=1e-6)
    assert abs(rows["c"].rel_error) < 1e-9
    assert "multi-GPU" in rows["d"].skipped
    assert "not in the catalog" in rows["e"].skipped
    assert "estimate" in rows["f"].skipped
    stats = summary(list(rows.values()))
    assert stats["compared"] == 3 and stats["skipped"] == 3


def test_missing_column_is_one_line_exit_2(tmp_path, cli):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,model\nx,llama\n")
    code, _, err = cli("validate", "--measurements", str(bad))
    assert code == 2 and "missing column" in err and str(bad) in err


@pytest.mark.skipif(not SHARED.is_file(), reason="the shared measurement set is not beside the checkout")
def test_published_measurements_json(cli):
    code, out, _ = cli("validate", "--measurements", str(SHARED), "--json")
    data = json.loads(out)
    assert code == 0
    rows = {r["id"]: r for r in data["rows"]}
    assert all({"id", "predicted_bytes", "measured_bytes", "rel_error", "skipped"} <= set(r)
               for r in rows.values())
    # Parameter counts are exact (lit-gpt and PEFT printouts).
    for row_id in ("ras-p1", "ras-p2", "mc-p1", "mc-p3"):
        assert rows[row_id]["rel_error"] == 0, row_id
    # PEFT's own method comparison on an L40S (max_memory_reserved): within 5%.
    for row_id in ("mc-01", "mc-03", "mc-05"):
        assert abs(rows[row_id]["rel_error"]) < 0.05, row_id
    assert data["summary"]["compared"] >= 40
