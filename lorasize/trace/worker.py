"""Subprocess entry: ``python -m lorasize.trace.worker`` reads a JSON list of configurations on
stdin and writes a JSON list of results (or errors) on stdout. One process traces many
configurations, so the heavy imports are paid once; the process isolates the global patches."""

from __future__ import annotations

import json
import sys
import traceback


def _specs(item: dict):
    from ..arch.lora import LoraSpec
    from ..arch.model import ModelSpec
    from ..specs import TrainSpec

    lora = dict(item["lora"])
    lora["targets"] = tuple(lora["targets"])
    model = ModelSpec.from_hf_config(item["model"]["hf_config"], name=item["model"]["name"])
    return model, LoraSpec(**lora), TrainSpec(**item["train"])


def main() -> int:
    from ..errors import LorasizeError
    from .run import trace_step

    results = []
    for item in json.load(sys.stdin):
        try:
            model, lora, train = _specs(item)
            if item.get("compiled"):
                from .compiled import compiled_probe

                results.append({"ok": True, "result": compiled_probe(model, lora, train)})
                continue
            if item.get("probe"):
                from .layer_probe import probe_kinds

                results.append({"ok": True, "result": probe_kinds(model, lora, train)})
                continue
            result = trace_step(model, lora, train, fake=item.get("fake", True),
                                round_to=item.get("round_to", 512), emulate=item.get("emulate", True),
                                real_bnb=item.get("real_bnb", False),
                                reentrant=item.get("reentrant", False))
            results.append({"ok": True, "result": result.to_dict()})
        except LorasizeError as exc:
            results.append({"ok": False, "error": str(exc), "usage": True})
        except Exception as exc:  # report which operation failed, for the one-line message
            frames = traceback.extract_tb(exc.__traceback__)
            where = next((f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                          for f in reversed(frames) if "lorasize" not in f.filename), "?")
            results.append({"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} at {where}"})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
