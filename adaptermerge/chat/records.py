"""Chat records as JSONL: one `{"messages": [...], "meta": {...}}` object per line.

`messages` is a list of `{"role": "system"|"user"|"assistant", "content": str}` that ends with the
assistant turn to learn; `meta` (optional for custom data) carries what scoring needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AdapterMergeError
from ..fileio import regular_file, write_text_atomic

ROLES = ("system", "user", "assistant")
# What scoring each built-in task needs in a record's meta (evalsuite.metrics reads these keys).
META_KEYS = {"domain": ("field", "answer"), "structured": ("schema", "answer"), "safety": ("harmful",)}


def check_record(row: object, where: str) -> dict:
    """Return `row` if it is a valid chat record, else raise naming `where` (e.g. "data.jsonl line 7")."""
    if not isinstance(row, dict):
        raise AdapterMergeError(f"{where}: expected a JSON object with 'messages', got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise AdapterMergeError(f"{where}: 'messages' must be a list of at least a user and an assistant turn")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise AdapterMergeError(
                f"{where}: messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': string}}"
            )
    if messages[-1]["role"] != "assistant":
        raise AdapterMergeError(f"{where}: the last message must be the assistant turn to learn")
    if not any(m["role"] == "user" for m in messages):
        raise AdapterMergeError(f"{where}: no user message")
    if "meta" in row and not isinstance(row["meta"], dict):
        raise AdapterMergeError(f"{where}: 'meta' must be a JSON object")
    return row


def jsonl_text(records: list[dict]) -> str:
    """The canonical JSONL text of `records` (its digest.sha256_text identifies built-in data in training.json)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def write_jsonl(records: list[dict], path: str | Path, *, force: bool = True) -> Path:
    """Write records atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    if path.exists() and not force:
        raise AdapterMergeError(f"{path} exists: pass --force to overwrite")
    for i, row in enumerate(records, 1):
        check_record(row, f"record {i}")
    return write_text_atomic(path, jsonl_text(records))


def read_jsonl(path: str | Path, task: str | None = None) -> list[dict]:
    """Read and validate chat records; a malformed row raises AdapterMergeError naming its line.

    `task`, when given and not "custom", also requires each row's meta to carry what that task's
    scoring needs (META_KEYS).
    """
    path = regular_file(path, "data file")
    required: tuple[str, ...] = ()
    if task not in (None, "custom"):
        if task not in META_KEYS:
            raise AdapterMergeError(f"unknown task {task!r}: expected one of {', '.join(META_KEYS)} or custom")
        required = META_KEYS[task]
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AdapterMergeError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            check_record(row, where)
            missing = [k for k in required if k not in row.get("meta", {})]
            if missing:
                raise AdapterMergeError(f"{where}: meta lacks {', '.join(missing)} needed to score task {task!r}")
            records.append(row)
    if not records:
        raise AdapterMergeError(f"data file {path} holds no records")
    return records
