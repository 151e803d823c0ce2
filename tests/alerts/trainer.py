"""A training launcher for tests (`distill.launcher: command`) that hands back a given ONNX file
as the candidate, with the stop verdict `ceiling_reached`: everything the daemon does next (gates,
registry, promotion or rejection, alerts, report) is real, in seconds instead of minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRAINER = """
import json, os, shutil, sys
out, model, card = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
os.makedirs(out, exist_ok=True)
shutil.copy(model, os.path.join(out, "student.onnx"))
json.dump({**card, "name": "candidate"}, open(os.path.join(out, "card.json"), "w"))
json.dump({"stop": {"verdict": "ceiling_reached", "reasons": ["gain within noise"]}},
          open(os.path.join(out, "result.json"), "w"))
"""


def ceiling_trainer(folder: Path, model: Path, card: Path) -> dict[str, Any]:
    """The `distill` config section of that launcher."""
    script = folder / "trainer.py"
    script.write_text(TRAINER)
    return {"launcher": "command", "command": f"{{python}} {script} {{out}} {model} {card}"}
