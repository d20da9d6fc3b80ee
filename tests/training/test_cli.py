import json

import pytest

from adaptermerge.cli.main import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_data_build(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    code, _, err = _run(["data", "build", "--task", "structured", "--split", "eval", "-o", str(out)], capsys)
    assert code == 0 and "structured eval records" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["meta"]["schema"]["type"] == "object"
    code, _, err = _run(["data", "build", "--task", "structured", "-o", str(out)], capsys)
    assert code == 2 and "--force" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "--task", "poetry"], "unknown task 'poetry'"),
        (["train", "--task", "poetry", "-o", "x"], "unknown task 'poetry'"),
        (["train", "--task", "custom", "-o", "x"], "needs --data"),
        (["train", "--task", "custom", "--data", "missing.jsonl", "-o", "x"], "missing.jsonl does not exist"),
        (["eval", "x", "--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_malformed_row_named_by_line(tmp_path, tiny_chat_base, capsys):
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"messages": "oops"}) + "\n")
    code, _, err = _run(["train", "--task", "custom", "--data", str(data), "--base", str(tiny_chat_base),
                         "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "bad.jsonl line 2" in err
    assert not (tmp_path / "out").exists()
