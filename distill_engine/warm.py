"""Warm start: load a parent student's weights from its ONNX file into a fresh torch module.

A redistillation round usually has few rows of the changed distribution; starting from the
parent's weights keeps what it already knows (the other slices) and spends the round on
what changed, instead of relearning everything from a small window. The parent is only
available as ONNX (that is what the registry stores), so the weights are read back from the
graph's initializers.

Initializers are matched to the module's `state_dict` by name (the TorchScript exporter keeps
parameter names such as `body.0.weight`); names the exporter changed are matched by graph
order among the remaining initializers of the same shape. Loading is accepted only when
torch and ONNX Runtime then agree on the logits, so a graph that is not the same
architecture (or that an optimiser folded) fails loudly instead of training from garbage.

A wider student of the same family grows from a narrower parent (Net2Net's function-preserving
widening): each parent tensor fills the leading block of the same-named wider tensor, and the
weights from the new units into the old ones are zero, so the wider student starts out
computing exactly the parent's function and keeps what the parent learned from rows no longer
in the window; the new units then learn what the parent had no room for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import JobError
from .export import onnx_logits


def onnx_initializers(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(name, array) of every initializer, in graph order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return [(init.name, numpy_helper.to_array(init)) for init in model.graph.initializer]


def load_onnx_weights(
    model: nn.Module,
    path: str | Path,
    num_features: int,
    field: str = "student.init_from",
    tolerance: float = 1e-4,
    probe: np.ndarray | None = None,
    grow: bool = False,
) -> dict[str, Any]:
    """Copy the ONNX file's weights into `model` in place; JobError when they do not fit.
    `grow`: `model` may be a wider student of the parent's family (a warm start, not a check
    that a factory describes the file).

    Returns what was loaded: tensors matched by name / by shape, and the max abs logit
    difference torch vs ONNX Runtime on `probe` rows (random rows when None).
    """
    path = Path(path)
    if not path.exists():
        raise JobError(field, f"file not found: {path}")
    try:
        inits = onnx_initializers(path)
    except Exception as e:  # onnx raises several unrelated types for bad files
        raise JobError(field, f"cannot read {path} as ONNX: {e}") from None
    state = model.state_dict()
    by_name = {name: arr for name, arr in inits}
    used: set[str] = set()
    new: dict[str, torch.Tensor] = {}
    by_shape: list[str] = []
    grown: list[str] = []
    for key, tensor in state.items():
        arr = by_name.get(key)
        if arr is not None and tuple(arr.shape) == tuple(tensor.shape):
            new[key] = torch.as_tensor(arr.copy(), dtype=tensor.dtype)
            used.add(key)
        elif grow and arr is not None and _fits_inside(arr.shape, tuple(tensor.shape)):
            new[key] = _grow(tensor, arr)
            used.add(key)
            grown.append(key)
    for key, tensor in state.items():
        if key in new:
            continue
        if key.endswith("num_batches_tracked"):
            new[key] = tensor
            continue
        match = next(
            (n for n, a in inits if n not in used and tuple(a.shape) == tuple(tensor.shape)),
            None,
        )
        if match is None:
            raise JobError(
                field,
                f"{path.name} has no weight for {key} {tuple(tensor.shape)}: not the student's architecture",
            )
        new[key] = torch.as_tensor(by_name[match].copy(), dtype=tensor.dtype)
        used.add(match)
        by_shape.append(key)
    model.load_state_dict(new)
    x = (
        np.random.default_rng(0).normal(size=(64, num_features)).astype(np.float32)
        if probe is None
        else np.asarray(probe[:256], dtype=np.float32)
    )
    model.eval()
    with torch.no_grad():
        ours = model(torch.as_tensor(x)).double().numpy()
    try:
        theirs = onnx_logits(path, x)
    except Exception as e:  # ORT raises its own exception types
        raise JobError(field, f"ONNX Runtime cannot run {path.name}: {e}") from None
    if theirs.shape != ours.shape:
        raise JobError(field, f"{path.name} outputs {theirs.shape[1:]}, the student {ours.shape[1:]}")
    diff = float(np.abs(ours - theirs).max()) if len(x) else 0.0
    scale = max(1.0, float(np.abs(theirs).max()) if len(x) else 1.0)
    if diff > tolerance * scale:
        raise JobError(
            field,
            f"weights loaded from {path.name} do not reproduce its outputs (max |Δlogit| {diff:.3g}): "
            + ("not a narrower student of the same family" if grown else "not the student's architecture"),
        )
    return {
        "path": str(path),
        "tensors": len(new),
        "matched_by_name": len(new) - len(by_shape),
        "matched_by_shape": by_shape,
        "grown": grown,
        "max_abs_logit_diff": diff,
    }


def _fits_inside(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    """A narrower tensor of the same layer: larger only in the unit dimensions (0 and 1)."""
    if len(small) != len(big) or len(big) == 0:
        return False
    return all(s <= b for s, b in zip(small[:2], big[:2], strict=True)) and small[2:] == big[2:]


def _grow(tensor: torch.Tensor, parent: np.ndarray) -> torch.Tensor:
    """The wider tensor: its fresh initialisation, the parent's block in front, and zero weights
    from new inputs into the parent's units (so the old units compute what they did)."""
    out = tensor.clone()
    block = tuple(slice(0, n) for n in parent.shape)
    out[block] = torch.as_tensor(parent.copy(), dtype=tensor.dtype)
    if parent.ndim >= 2 and parent.shape[1] < tensor.shape[1]:
        out[: parent.shape[0], parent.shape[1] :] = 0
    return out
