"""`python -m distill_engine --job JOB.yaml --out DIR` (also the entry point under torchrun)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
