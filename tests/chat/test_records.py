import json

import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.chat.data import build_records
from adaptermerge.chat.records import read_jsonl, write_jsonl


def test_roundtrip(tmp_path):
    records = build_records("structured", "eval")[:5]
    path = write_jsonl(records, tmp_path / "d.jsonl")
    assert read_jsonl(path, task="structured") == records
    with pytest.raises(AdapterMergeError, match="exists"):
        write_jsonl(records, path, force=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "at least a user and an assistant"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}), "messages\\[1\\]"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}), "last message"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
def test_malformed_row_is_named_by_line(tmp_path, bad, message):
    good = json.dumps(build_records("domain", "eval")[0])
    path = tmp_path / "d.jsonl"
    path.write_text(f"{good}\n\n{good}\n{bad}\n{good}\n")
    with pytest.raises(AdapterMergeError, match=rf"d\.jsonl line 4: .*{message}"):
        read_jsonl(path)


def test_task_meta_is_required_for_scoring(tmp_path):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert read_jsonl(path) == [row]  # fine for training
    with pytest.raises(AdapterMergeError, match="line 1: meta lacks field, answer"):
        read_jsonl(path, task="domain")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(AdapterMergeError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(AdapterMergeError, match="no records"):
        read_jsonl(tmp_path / "e.jsonl")
