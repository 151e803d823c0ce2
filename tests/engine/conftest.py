"""Engine tests use tiny models: one torch thread avoids oversubscribing shared CI cores."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
