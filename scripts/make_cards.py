"""Write the architecture cards of the catalog's carded models (``lorasize/data/cards``).

Each model in ``lorasize/data/models.json`` holds its public ``config.json`` (with the URL it came
from and where the copy was read); this script builds each with the installed transformers on the
meta device, wraps it with PEFT's all-linear and writes what they decided
(:func:`lorasize.arch.derive.derive_card`). ``tests/test_cards.py`` runs the same derivation and
fails when a shipped card differs, so a transformers or PEFT release that changes an architecture
shows up in CI.

    python scripts/make_cards.py            # every card
    python scripts/make_cards.py gemma3-4b  # some
    python scripts/make_cards.py --add /path/entry.json ...  # add catalog entries, then cards
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lorasize.arch.model import FAMILIES  # noqa: E402
MODELS = ROOT / "lorasize" / "data" / "models.json"
CARDS = ROOT / "lorasize" / "data" / "cards"
ENTRY_KEYS = ("name", "aliases", "hf_id", "url", "found_at", "card", "config")


def load_models() -> dict:
    return json.loads(MODELS.read_text(encoding="utf-8"))


def save_models(data: dict) -> None:
    from lorasize.files import write_atomic

    data["models"].sort(key=lambda e: e["name"])
    write_atomic(MODELS, json.dumps(data, indent=1) + "\n")


def add_entries(paths: list[str]) -> list[str]:
    """Add entry files (name, hf_id, url, found_at, config) to models.json; returns names."""
    data = load_models()
    known = {e["name"]: e for e in data["models"]}
    added = []
    from lorasize.files import read_json

    for path in paths:
        entry = read_json(path)  # a missing or malformed file: one line naming it
        entry = {k: entry[k] for k in ENTRY_KEYS if k in entry}
        # Families with a hand-written layout (lorasize.arch.model.FAMILIES) are read as before.
        if entry["config"].get("model_type") not in FAMILIES:
            entry["card"] = entry["name"]
        entry.setdefault("aliases", [entry["hf_id"]])
        known[entry["name"]] = entry
        added.append(entry["name"])
    data["models"] = list(known.values())
    save_models(data)
    return added


def card_for(entry: dict):
    from lorasize.arch.derive import derive_card

    return derive_card(entry["config"], source=entry["url"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--add", nargs="+", default=[], metavar="ENTRY_JSON")
    args = parser.parse_args(argv)
    from lorasize.files import write_atomic

    from lorasize.errors import LorasizeError

    try:
        names = set(args.names) | set(add_entries(args.add) if args.add else ())
    except (LorasizeError, KeyError) as exc:
        print(f"make_cards: {exc if isinstance(exc, LorasizeError) else f'entry lacks {exc}'}",
              file=sys.stderr)
        return 2
    CARDS.mkdir(parents=True, exist_ok=True)
    for entry in load_models()["models"]:
        if not entry.get("card") or (names and entry["name"] not in names):
            continue
        start = time.perf_counter()
        try:
            card = card_for(entry)
        except Exception as exc:  # noqa: BLE001  report and go on
            print(f"{entry['name']}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        write_atomic(CARDS / f"{entry['card']}.json", card.to_json())
        print(f"{entry['name']}: {card.model_class}, {card.total_params:,} params, "
              f"{len(card.kinds)} kinds, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
