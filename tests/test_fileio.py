import os

import pytest

from adaptermerge import fileio
from adaptermerge.errors import AdapterMergeError


def _make(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)


def test_atomic_dir_refuses_an_existing_output_without_force(tmp_path):
    _make(tmp_path / "out", "old")
    with pytest.raises(AdapterMergeError, match="already exists: pass --force"):
        with fileio.atomic_dir(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "f.txt").read_text() == "old"


def test_atomic_dir_replaces_with_force_and_leaves_no_temp_folders(tmp_path):
    _make(tmp_path / "out", "old")
    with fileio.atomic_dir(tmp_path / "out", force=True) as tmp:
        (tmp / "f.txt").write_text("new")
    assert (tmp_path / "out" / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_error_in_the_body_leaves_the_previous_output(tmp_path):
    _make(tmp_path / "out", "old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(tmp_path / "out", force=True) as tmp:
            (tmp / "f.txt").write_text("half")
            raise RuntimeError("boom")
    assert (tmp_path / "out" / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_final_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    _make(tmp_path / "out", "old")
    real = os.replace

    def failing(src, dst):
        if ".tmp-" in str(src):  # the new folder moving into place
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        with fileio.atomic_dir(tmp_path / "out", force=True) as tmp:
            (tmp / "f.txt").write_text("new")
    assert (tmp_path / "out" / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_replaces_whole_files_and_cleans_up(tmp_path):
    from adaptermerge.fileio import write_text_atomic

    target = tmp_path / "sub" / "cache.json"
    assert write_text_atomic(target, "first") == target and target.read_text() == "first"
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    with pytest.raises(TypeError):
        write_text_atomic(target, b"not text")  # fails mid-write
    assert target.read_text() == "second" and sorted(p.name for p in target.parent.iterdir()) == ["cache.json"]


def test_read_json_object_names_the_file_and_what_was_expected(tmp_path):
    read_json_object = fileio.read_json_object
    good, broken, array = tmp_path / "good.json", tmp_path / "broken.json", tmp_path / "array.json"
    good.write_text('{"r": 8}')
    broken.write_text("{not json")
    array.write_text("[1, 2]")
    assert read_json_object(good) == {"r": 8}
    with pytest.raises(AdapterMergeError, match=r"broken\.json: not valid JSON"):
        read_json_object(broken)
    with pytest.raises(AdapterMergeError, match=r"array\.json: expected a JSON object, found list"):
        read_json_object(array)
    with pytest.raises(AdapterMergeError, match=r"missing\.json: not valid JSON"):
        read_json_object(tmp_path / "missing.json")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "does not exist or is not a file"),
    (lambda p: None, "does not exist or is not a file"),
    (lambda p: p.write_bytes(b"method: \xff\xfe\n"), "cannot be read as UTF-8"),
    (lambda p: p.write_text("a: [1,\n"), "not valid YAML"),
    (lambda p: p.write_text("a: !!python/object/apply:os.system ['true']\n"), "not valid YAML"),
])
def test_read_yaml_refuses_with_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "config.yaml"
    make(path)
    with pytest.raises(AdapterMergeError, match=message) as exc:
        fileio.read_yaml(path, "merge config")
    assert "config.yaml" in str(exc.value) and "\n" not in str(exc.value)
