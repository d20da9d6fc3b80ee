"""Quiet third-party chatter, in every process that runs our work."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_third_party() -> None:
    """Silence the warnings and log lines of the libraries underneath that say nothing to a user
    of this tool (the CLI's process and the evaluation helper's, which starts without them)."""
    # bitsandbytes warns about an optional `kernels` package; int8 matmuls warn about casts.
    warnings.filterwarnings("ignore", message=".*kernels.*")
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "peft", "bitsandbytes", "datasets", "lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging  # heavy: the caller may never load it

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass
