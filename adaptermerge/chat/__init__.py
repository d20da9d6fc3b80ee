"""Chat records and what training, evaluation and calibration all do with them.

- `records`: the `{"messages": [...], "meta": {...}}` record, its checks and its JSONL files;
- `data`: the built-in task data sets (domain, structured, safety) and the anchor prompts;
- `digest`: content hashes of texts, adapter weights and base model folders;
- `tokens`: a record as input ids and labels (loss on the reply only), and batches of them;
- `generation`: batched greedy replies to records.

A leaf of the package: it imports only `errors` and `fileio`.
"""
