"""Start-up against fitcheck-llm: the same question, two cold processes, timed in pairs.

The goal (issue: hardening): a cold ``lorasize estimate`` in a third of fitcheck-llm's time on
the same question. Both tools answer "LoRA r=16 on q,k,v,o of Llama-2-7B, batch 1 x 2048 tokens,
bf16, AdamW, on an RTX 4090" for the Hub id ``meta-llama/Llama-2-7b-hf``, each reading that id
the way it does for its users: fitcheck-llm from the ``config.json`` in huggingface_hub's cache
(``HF_HUB_OFFLINE=1``; it cannot reach the Hub's parameter count, and says so), lorasize from its
catalog, and also as a Hub id that is only in that cache (``example/llama-2-7b-copy``).

Both run from compiled bytecode, as ``pip install`` leaves them: the script compiles lorasize's
sources first (an editable install has no ``.pyc`` until Python writes one, and never when
``PYTHONDONTWRITEBYTECODE`` is set). The commands alternate A B A B ... after a warm-up; the
figure is the median of the ratios pair by pair, which holds when the machine's speed drifts.

    python3 benchmarks/startup_vs_fitcheck.py                  # installs fitcheck-llm 0.3.1 into
                                                               # .bench/fitcheck (a venv) first
    python3 benchmarks/startup_vs_fitcheck.py --fitcheck PATH  # an installed fitcheck command
    python3 benchmarks/startup_vs_fitcheck.py --runs 31 --record   # rewrite the recorded result

Recorded result: ``benchmarks/startup_vs_fitcheck.json``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "data" / "Llama-2-7b-hf.config.json"
RECORD = ROOT / "benchmarks" / "startup_vs_fitcheck.json"
FITCHECK_VERSION = "0.3.1"
TARGET_RATIO = 1 / 3
REVISION = "01c7f73d771dfac7d292323805ebc428287df4f9"

# fitcheck-llm's "standard" targets are q,k,v,o; its defaults: r=16, batch 1, 2048 tokens, bf16,
# AdamW with fp32 states (fitcheck --help, 0.3.1).
FITCHECK_ARGS = ["meta-llama/Llama-2-7b-hf", "--lora-r", "16", "--gpu", "4090"]
LORASIZE_ARGS = ["--r", "16", "--targets", "q_proj,k_proj,v_proj,o_proj", "--batch", "1",
                 "--seq-len", "2048", "--gpu", "rtx-4090"]
QUESTIONS = {"catalog": "meta-llama/Llama-2-7b-hf", "hub cache": "example/llama-2-7b-copy"}


def seed_hub_cache(cache: Path) -> None:
    """The Llama-2-7B config.json under both repo ids, in huggingface_hub's cache layout."""
    for repo_id in ("meta-llama/Llama-2-7b-hf", QUESTIONS["hub cache"]):
        folder = cache / ("models--" + repo_id.replace("/", "--"))
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(REVISION)
        snapshot = folder / "snapshots" / REVISION
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CONFIG, snapshot / "config.json")


def install_fitcheck(venv: Path) -> Path:
    command = venv / "bin" / "fitcheck"
    if not command.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                            f"fitcheck-llm=={FITCHECK_VERSION}"], check=True)
        except subprocess.CalledProcessError:
            sys.exit(f"could not install fitcheck-llm {FITCHECK_VERSION} into {venv}; install it "
                     f"yourself and pass --fitcheck PATH")
    return command


def lorasize_command() -> list[str]:
    found = shutil.which("lorasize")
    return [found] if found else [sys.executable, "-m", "lorasize"]


def time_run(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, done.returncode


def paired(a: list[str], b: list[str], env: dict[str, str], runs: int) -> dict:
    time_run(a, env), time_run(b, env)  # warm-up: the file cache, not counted
    a_s, b_s, ratios, codes = [], [], [], set()
    for _ in range(runs):
        ta, ca = time_run(a, env)
        tb, cb = time_run(b, env)
        a_s.append(ta), b_s.append(tb), ratios.append(ta / tb)
        codes.add((ca, cb))
    return {"lorasize_s": _stats(a_s), "fitcheck_s": _stats(b_s), "ratio": _stats(ratios),
            "exit_codes": sorted(codes)}


def _stats(values: list[float]) -> dict:
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4),
            "max": round(max(values), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fitcheck", help="an installed fitcheck command (default: install "
                        f"fitcheck-llm {FITCHECK_VERSION} into .bench/fitcheck)")
    parser.add_argument("--runs", type=int, default=15, help="pairs counted (default 15)")
    parser.add_argument("--record", action="store_true", help=f"write {RECORD.name}")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs: at least 3")
    fitcheck = Path(args.fitcheck) if args.fitcheck else install_fitcheck(ROOT / ".bench" / "fitcheck")
    if not fitcheck.is_file():
        parser.error(f"--fitcheck: no such file: {fitcheck}")
    compileall.compile_dir(str(ROOT / "lorasize"), quiet=1)
    results = {}
    with tempfile.TemporaryDirectory() as home:
        seed_hub_cache(Path(home) / "hub")
        env = {**os.environ, "HF_HOME": home, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
        for label, model in QUESTIONS.items():
            results[label] = paired([*lorasize_command(), "estimate", "--model", model,
                                     *LORASIZE_ARGS], [str(fitcheck), *FITCHECK_ARGS], env,
                                    args.runs)
    print(f"cold process, wall seconds, {args.runs} pairs "
          f"(lorasize / fitcheck-llm {FITCHECK_VERSION}; target ratio <= {TARGET_RATIO:.3f})")
    print(f"{'lorasize reads':<12} {'lorasize':>9} {'fitcheck':>9} {'ratio':>7} "
          f"{'ratio min-max':>15}  verdict")
    for label, r in results.items():
        verdict = "met" if r["ratio"]["median"] <= TARGET_RATIO else "not met"
        print(f"{label:<12} {r['lorasize_s']['median']:>9.3f} {r['fitcheck_s']['median']:>9.3f} "
              f"{r['ratio']['median']:>7.3f} {r['ratio']['min']:>7.3f}-{r['ratio']['max']:<7.3f}"
              f"  {verdict}")
    if args.record:
        record = {"about": __doc__.splitlines()[0], "target_ratio": round(TARGET_RATIO, 4),
                  "runs": args.runs, "python": platform.python_version(),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                  "fitcheck": FITCHECK_VERSION, "questions": QUESTIONS, "results": results}
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
