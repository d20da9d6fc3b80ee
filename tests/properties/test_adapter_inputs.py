"""Property: whatever an adapter's adapter_config.json or safetensors header holds, `adaptermerge
inspect` and a merge of it either exit 2 with one `error:` line, or succeed with finite numbers
(inspect's norms, the merged factors, which equal the input's own delta for one adapter). Either
way the input files are unchanged (sha256), and a refused merge leaves no output and no temp
folder behind.

Configs are a valid PEFT config with 0 to 4 fields replaced by hostile values (strings for
numbers and bools, NaN, 1e308, zero and negative alphas, lists for mappings, bad regexes, nested
containers). Headers are written as raw bytes (8-byte little-endian length, JSON header, data):
random dtypes, shapes and offsets, random metadata alphas, and data that may hold NaN or Inf."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from adaptermerge import load_adapter
from adaptermerge.cli.main import main

SETTINGS = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_LINE = 600
# (module, out, in) of tiny_base's attention projections (hidden 32, 2 KV heads of 8)
MODULES = [(f"model.layers.{i}.self_attn.{p}", 32 if p == "q_proj" else 16, 32) for i in range(2) for p in ("q_proj", "v_proj")]

SCALARS = (st.none() | st.booleans() | st.integers(-3, 10) | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.sampled_from([1e308, 3e38, -1e308, float("nan"), 0, 0.0, -8, 1e-300, "8", "false", "", "x" * 3000]))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
# regex keys, valid and not, slow ones included (random regexes would mostly be invalid)
PATTERN_KEYS = st.sampled_from(["q_proj", "v_proj", "layers.0.self_attn.q_proj", r"layers\.1\..*", ".*", "x", "",
                                "q_proj(", "[", "*", "(a|b", "\\", "a{2,1}", "(.*)*x", "(a+)+b", ".*.*.*x"])
FIELDS = {
    "r": st.integers(-1, 6) | JUNK,
    "lora_alpha": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 2**70) | JUNK,
    "rank_pattern": st.dictionaries(PATTERN_KEYS, st.integers(-1, 6) | JUNK, max_size=3) | JUNK,
    "alpha_pattern": st.dictionaries(PATTERN_KEYS, st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 64) | JUNK, max_size=3) | JUNK,
    "target_modules": st.lists(st.sampled_from(["q_proj", "v_proj", "k_proj"]) | JUNK, max_size=3) | JUNK,
    "use_rslora": st.booleans() | JUNK,
    "use_dora": st.booleans() | JUNK,
    "fan_in_fan_out": st.booleans() | JUNK,
    "lora_bias": st.booleans() | JUNK,
    "peft_type": st.sampled_from(["LORA", "LOHA", "lora"]) | JUNK,
    "base_model_name_or_path": JUNK,
    "task_type": JUNK,
}


def _valid_config() -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
            "lora_bias": False, "base_model_name_or_path": None}


@st.composite
def configs(draw):
    config = _valid_config()
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            config.pop(key)
        else:
            config[key] = draw(FIELDS[key])
    return config


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(argv) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, out.getvalue(), err.getvalue()


def _check(root: Path, source: Path, extra: list[str] = ()) -> None:
    """inspect and a merge of `source` (a folder or file inside `root`): one error line or finite
    results; inputs unchanged; nothing left behind on a refusal."""
    before = _digest(root)
    listing = sorted(p.name for p in root.iterdir())
    code, out, err = _cli(["inspect", source, "--json", *extra])
    event(f"inspect exit {code}")
    assert code in (0, 2), err[-3000:]
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < MAX_LINE, err[:2000]
    else:
        rows = json.loads(out)
        rows = rows.get("modules", rows) if isinstance(rows, dict) else rows
        text = json.dumps(rows)
        assert "NaN" not in text and "Infinity" not in text, text[:500]
    assert _digest(root) == before
    for method in ("linear", "ties"):
        merged = root / "merged"
        code, _, err = _cli([method, source, "-o", merged, *extra])
        event(f"{method} exit {code}")
        assert code in (0, 2), err[-3000:]
        assert {k: v for k, v in _digest(root).items() if not k.startswith("merged/")} == before  # inputs unchanged
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < MAX_LINE, err[:2000]
            assert "Traceback" not in err
            assert sorted(p.name for p in root.iterdir()) == listing  # no output, no temp folder
            continue
        assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folder
        result, given = load_adapter(merged), load_adapter(source, alpha=float(extra[1]) if extra else None)
        for module in result.modules:
            factors = result.factors(module)
            delta = factors.delta()
            assert torch.isfinite(delta).all()
            if method == "linear":  # one adapter at weight 1 comes back as itself, to the output dtype's precision
                expected = given.factors(module).delta()
                eps = max(torch.finfo(factors.A.dtype).eps, 1e-6)
                torch.testing.assert_close(delta, expected, atol=50 * eps * (1 + float(expected.abs().max())), rtol=0)
        shutil.rmtree(merged)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> bytes:
    """adapter_model.safetensors of a valid rank-4 adapter on the q and v projections, as bytes."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for module, rows, cols in MODULES:
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(4, cols, generator=g)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(rows, 4, generator=g)
    path = tmp_path_factory.mktemp("adapter_inputs") / "adapter_model.safetensors"
    save_file(tensors, str(path))
    return path.read_bytes()


@SETTINGS
@given(config=configs())
def test_any_adapter_config_is_one_error_line_or_finite_results(weights, config):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "adapter"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(weights)
        (folder / "adapter_config.json").write_text(json.dumps(config))  # NaN and Infinity as Python writes them
        _check(root, folder)


# -- safetensors headers, as raw bytes ---------------------------------------------------------

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "U16": 2, "BOOL": 1, "F8_E4M3": 1}
KEYS = [f"base_model.model.{m}.lora_{ab}.weight" for m, _, _ in MODULES[:2] for ab in "AB"] + [
    f"base_model.model.{MODULES[0][0]}.lora_magnitude_vector", "base_model.model.model.layers.0.mlp.up_proj.weight",
    f"{MODULES[1][0]}.lora_A.default.weight", "x" * 200, "a\nb.lora_A.weight", ""]


@st.composite
def headers(draw):
    """(file bytes, --alpha or None): a header of 1 to 5 tensors, mostly well-formed."""
    # Whether each part is made hostile: a plain random draw, one in 25, so that most
    # headers have one fault or none (hypothesis favours the ends of its ranges, which would make
    # nearly every header hostile several times over).
    rng = draw(st.randoms(use_true_random=True))

    def rare() -> bool:
        return rng.random() < 0.04

    header, data, offset = {}, b"", 0
    r = draw(st.sampled_from([0, 1, 2])) if rare() else 4
    for module, rows, cols in MODULES[: draw(st.integers(1, 2))]:
        for ab, shape in (("A", [r, cols]), ("B", [rows, r])):
            key = f"base_model.model.{module}.lora_{ab}.weight"
            dtype = draw(st.sampled_from(sorted(DTYPES)) if rare() else st.sampled_from(["F32", "F16", "BF16", "F64"]))
            if rare():
                shape = draw(st.lists(st.integers(0, 40), max_size=3))
            size = math.prod(shape) * DTYPES[dtype]
            kind = draw(st.sampled_from(["bytes", "huge"])) if rare() else "randn"
            if kind == "bytes":  # raw bits: NaN and Inf patterns included
                blob = draw(st.binary(min_size=size, max_size=size))
            else:
                seed = draw(st.integers(0, 2**16))
                t = torch.randn(math.prod(shape), generator=torch.Generator().manual_seed(seed)) * (1e20 if kind == "huge" else 1.0)
                blob = t.to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(dtype, torch.float32)
                            ).view(torch.uint8).numpy().tobytes()[:size].ljust(size, b"\0")
            end = offset + size
            offsets = [offset, end] if not rare() else draw(st.lists(st.integers(-2, end + 64), min_size=0, max_size=3))
            header[key] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
            data += blob
            offset = end
    if rare():
        header[draw(st.sampled_from(KEYS))] = {"dtype": draw(st.sampled_from(sorted(DTYPES))), "shape": [0], "data_offsets": [offset, offset]}
    meta = {}
    if not rare():
        meta[draw(st.sampled_from(["lora_alpha", "alpha", "ss_network_alpha", "adapter_config"]))] = draw(
            st.sampled_from(["8", "16", "0.5", '{"lora_alpha": 16}']) if not rare()
            else st.sampled_from(["-8", "0", "nan", "inf", "1e400", "abc", "1e308", '{"lora_alpha": -1}', "[1]"]))
    if meta or draw(st.booleans()):
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    if rare():
        text = draw(st.binary(max_size=64))
    blob = struct.pack("<Q", len(text)) + text + data
    if rare():
        blob = blob[: draw(st.integers(0, len(blob)))]
    alpha = draw(st.sampled_from(["-1", "1e300"])) if rare() else draw(st.sampled_from([None, "8"]))
    return blob, alpha


@SETTINGS
@given(case=headers())
def test_any_safetensors_header_is_one_error_line_or_finite_results(case):
    blob, alpha = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "bare.safetensors"
        path.write_bytes(blob)
        _check(root, path, ["--alpha", alpha] if alpha is not None else [])
