"""`EvalSettings`: how an evaluation runs. The runner, the results cache's keys and the helper
process all read the same object."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalSettings:
    base: str | None = None  # the base model (None: the first adapter's base, else the embedded one)
    mmlu_data: str | None = None  # local cais/mmlu CSV folder (None: $ADAPTERMERGE_MMLU_DATA, else the hub)
    mmlu_limit: int | None = None  # questions per subject
    mmlu_subjects: int | None = None  # that many subjects, evenly spaced (None: all 57)
    mmlu_shots: int = 0
    mmlu_split: str = "test"  # test, or dev (5 per subject) to choose settings on other questions
    mmlu_format: str = "auto"  # auto | cloze | letter
    seed: int = 0  # the MMLU sample
    # The seed the built-in tasks' data is generated with (None: chat.data.DATA_SEED, what training
    # uses). It must be the one the adapters were trained on: `evaluate` refuses an adapter whose
    # training.json names another (its eval split would hold its own training items).
    data_seed: int | None = None
    batch_size: int = 32  # generation batch
    context_batch: int = 8  # distinct MC contexts per forward pass
    # torch threads of each evaluation process (None: this machine's threads shared among the
    # processes that parallel.processes allows, whether or not a helper ends up starting). bfloat16
    # scores depend on it (cputhreads), so it is resolved before any work and is part of the cache key.
    threads: int | None = None
    # auto | float32 | bfloat16. auto: bfloat16 on hardware with native bf16 (about 2x faster on the
    # CPU; scores shift slightly), else float32. The report and cache key hold the resolved dtype.
    dtype: str = "auto"
    use_cache: bool = True
    # Evaluation processes: None = 2 on a multi-core CPU (a helper process shares the queue of models;
    # see parallel.py), 1 on CUDA or with use_cache off. Scores do not depend on it.
    workers: int | None = None
