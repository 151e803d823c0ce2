"""Student architectures and the `module:function` factory resolver.

Every factory takes `num_features` and `num_classes` keywords and returns an `nn.Module`
mapping float32 `[N, num_features]` to logits `[N, num_classes]`, so any of them exports to
ONNX with the same input/output signature.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import JobError


class MLP(nn.Module):
    """Plain ReLU MLP; named `body.N` layers so hints can point at them."""

    def __init__(self, num_features: int, num_classes: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN1D(nn.Module):
    """1-D CNN over a feature vector read as a single-channel sequence (e.g. MNIST-1D).

    Strided convolutions shrink the sequence; the result is flattened (position matters for
    MNIST-1D) and passed through an optional hidden layer (`fc`) to the head.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        channels: Sequence[int],
        kernel_size: int,
        stride: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        c_in, length = 1, num_features
        pad = kernel_size // 2
        for c in channels:
            convs += [nn.Conv1d(c_in, c, kernel_size, stride=stride, padding=pad), nn.ReLU()]
            c_in = c
            length = (length + 2 * pad - kernel_size) // stride + 1
        self.features = nn.Sequential(*convs)
        flat = c_in * length
        self.fc: nn.Module = (
            nn.Sequential(nn.Linear(flat, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(hidden if hidden > 0 else flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1)).flatten(1)
        return self.head(self.dropout(self.fc(h)))


def mlp(
    num_features: int, num_classes: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0
) -> nn.Module:
    """A ReLU MLP with the given hidden widths."""
    return MLP(num_features, num_classes, list(hidden), dropout)


def cnn1d(
    num_features: int,
    num_classes: int,
    channels: Sequence[int] = (32, 32, 32),
    kernel_size: int = 5,
    stride: int = 2,
    hidden: int = 0,
    dropout: float = 0.0,
) -> nn.Module:
    """A strided 1-D CNN for sequence-like features."""
    return CNN1D(num_features, num_classes, list(channels), kernel_size, stride, hidden, dropout)


def resolve_factory(spec: str, field: str = "student.factory") -> Callable[..., Any]:
    """Import `module:function`; JobError naming `field` when it cannot."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise JobError(field, f"cannot import module {module_name!r}: {e}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise JobError(field, f"module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise JobError(field, f"{spec!r} is not callable")
    return fn  # type: ignore[return-value]


def build_model(
    factory: str, kwargs: dict[str, Any], num_features: int, num_classes: int, field: str = "student"
) -> nn.Module:
    """Call a factory with the data's shape; the result must be an nn.Module."""
    fn = resolve_factory(factory, f"{field}.factory")
    try:
        model = fn(num_features=num_features, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise JobError(f"{field}.kwargs", str(e)) from None
    if not isinstance(model, nn.Module):
        raise JobError(f"{field}.factory", f"{factory!r} returned {type(model).__name__}, not an nn.Module")
    return model


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


_WIDTH_KEYS = ("hidden", "channels", "width", "widths", "hidden_size", "units")


def _factory_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _scaled(value: Any, factor: float) -> Any:
    """Widths times `factor` (ints and sequences of ints; 0 stays 0, others stay as they are)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, int(round(value * factor))) if value > 0 else value
    if isinstance(value, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [_scaled(v, factor) for v in value]
    return value


def wider_variants(
    factory: str,
    kwargs: dict[str, Any],
    num_features: int,
    num_classes: int,
    max_params_factor: float = 4.0,
    k: int = 3,
) -> list[dict[str, Any]]:
    """Up to `k` wider versions of a student, same factory, each within `max_params_factor` x params.

    Width arguments (`hidden`, `channels`, `width`, ... from the kwargs or the factory's
    defaults) are scaled by growing factors; the variants returned are spread between the
    smallest wider one and the largest that fits, largest last. Each item is
    `{"factory", "kwargs", "params", "params_factor"}`; empty when nothing can be widened.
    """
    fn = resolve_factory(factory)
    merged = {**_factory_defaults(fn), **kwargs}
    keys = [key for key in _WIDTH_KEYS if key in merged and _scaled(merged[key], 2.0) != merged[key]]
    if not keys or k <= 0:
        return []
    parent = count_params(build_model(factory, kwargs, num_features, num_classes))
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for step in range(1, 41):
        factor = 1.0 + 0.25 * step
        new_kwargs = {**kwargs, **{key: _scaled(merged[key], factor) for key in keys}}
        params = count_params(build_model(factory, new_kwargs, num_features, num_classes))
        if params > max_params_factor * parent:
            break
        sig = repr(sorted(new_kwargs.items()))
        if params > parent and sig not in seen:
            seen.add(sig)
            found.append(
                {"factory": factory, "kwargs": new_kwargs, "params": params, "params_factor": params / parent}
            )
    if len(found) <= k:
        return found
    picks = sorted({int(round(i)) for i in np.linspace(0, len(found) - 1, k)})
    return [found[i] for i in picks]
