"""Progress callbacks: the signatures long operations report through. The library only calls
them; how progress is shown (the CLI's rich bars) is the caller's business."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[int, int, str], None]  # (done, total, item): modules merged or written
StageProgress = Callable[[str, int, int], None]  # (stage, done, total): quantization's "load", "save", "layers", "kl"
