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
    with pytest.raises(AdapterMergeError, match="out: disk full"):
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
    with pytest.raises(AdapterMergeError, match=r"missing\.json does not exist"):
        read_json_object(tmp_path / "missing.json")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a folder, expected a file"),
    (lambda p: None, "does not exist"),
    (lambda p: os.mkfifo(p), "is a FIFO, expected a regular file"),
    (lambda p: p.symlink_to(p), "cannot be read"),
    (lambda p: p.write_bytes(b"method: \xff\xfe\n"), "not UTF-8 text"),
    (lambda p: p.write_text("[" * 100_000), "not valid YAML"),
    (lambda p: p.write_text("a: [1,\n"), "not valid YAML"),
    (lambda p: p.write_text("a: !!python/object/apply:os.system ['true']\n"), "not valid YAML"),
])
def test_read_yaml_refuses_with_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "config.yaml"
    make(path)
    with pytest.raises(AdapterMergeError, match=message) as exc:
        fileio.read_yaml(path, "merge config")
    assert "config.yaml" in str(exc.value) and "\n" not in str(exc.value)


def _model_folder(root, **files):
    root.mkdir()
    (root / "config.json").write_text("{}")
    for name, data in files.items():
        (root / name.replace("__", ".")).write_bytes(data)
    return root


def test_hf_folder_returns_the_safetensors_weights(tmp_path):
    single = _model_folder(tmp_path / "single", model__safetensors=b"x", pytorch_model__bin=b"x")
    assert fileio.hf_folder(single, "model folder") == [single / "model.safetensors"]
    sharded = _model_folder(tmp_path / "sharded", a__safetensors=b"x", b__safetensors=b"x")
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {"x": "a.safetensors", "y": "b.safetensors", "z": "a.safetensors"}}')
    assert fileio.hf_folder(sharded, "model folder") == [sharded / "a.safetensors", sharded / "b.safetensors"]


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "pytorch_model.bin").write_bytes(b"x"), "only pickle weights .*pytorch_model.bin"),
    (lambda d: (d / "decoy.safetensors").write_bytes(b"x"), "has no model.safetensors"),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"x": "pytorch_model.bin"}}'),
     "weight_map names 'pytorch_model.bin'"),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"x": "../model.safetensors"}}'),
     "expected a .safetensors file in the folder"),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"metadata": {}}'), "weight_map"),
    (lambda d: os.mkfifo(d / "model.safetensors"), "is a FIFO"),
    (lambda d: os.mkfifo(d / "tokenizer.json"), "tokenizer.json is a FIFO"),
    (lambda d: (d / "special_tokens_map.json").symlink_to(d / "special_tokens_map.json"), "special_tokens_map.json cannot be read"),
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
])
def test_hf_folder_refuses_with_one_line(tmp_path, make, message):
    folder = _model_folder(tmp_path / "m")
    make(folder)
    with pytest.raises(AdapterMergeError, match=message) as info:
        fileio.hf_folder(folder, "model folder")
    assert "\n" not in str(info.value) and "model folder" in str(info.value)


def test_check_output_refuses_what_cannot_be_an_output(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    for out, message in [(".", "current folder"), ("..", "current folder"), ("/", "root folder"),
                         ("file/out", "file is not a folder"), ("dangling", "dangling symlink"),
                         ("/proc/x/y", "cannot create a folder in /proc"), ("a\0b", "not a valid path")]:
        with pytest.raises(AdapterMergeError, match=message):
            fileio.check_output(out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file"]


def test_a_nul_byte_in_an_input_path_is_one_line(tmp_path):
    for check in (fileio.regular_file, fileio.folder):
        with pytest.raises(AdapterMergeError, match="not a valid path"):
            check(str(tmp_path / "a\0b"), "input")
