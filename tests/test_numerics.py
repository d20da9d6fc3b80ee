"""No garbage written: an input whose delta overflows float32, or a merge whose result does, is a
one-line error naming the module and the input, with no output folder and the inputs unchanged."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adaptermerge import AdapterMergeError, load_adapter
from adaptermerge.adapter import F32_MAX, Adapter, LoraFactors, delta_problem, max_abs
from adaptermerge.cli.main import main
from adaptermerge.engine import merge, merge_to_model

# (module, out, in) of tiny_base's attention projections (hidden 32, 2 KV heads of 8)
MODULES = [(f"model.layers.{i}.self_attn.{p}", 32 if p == "q_proj" else 16, 32) for i in range(2) for p in ("q_proj", "v_proj")]


def write_adapter(folder: Path, base: Path, *, alpha=8.0, r=4, a_scale=1.0, b_scale=1.0, dtype=torch.float32, seed=0) -> Path:
    """A PEFT folder on tiny_base's q/v projections with random factors, scaled as asked."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, out, inp in MODULES:
        tensors[f"base_model.model.{module}.lora_A.weight"] = (torch.randn(r, inp, generator=g) * a_scale).to(dtype)
        tensors[f"base_model.model.{module}.lora_B.weight"] = (torch.randn(out, r, generator=g) * b_scale).to(dtype)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": str(base),
    }))
    return folder


def digest(*paths: Path) -> dict:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for p in paths for f in sorted(Path(p).rglob("*")) if f.is_file()}


def cli(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def ok(tiny_base, tmp_path):
    return write_adapter(tmp_path / "ok", tiny_base, seed=1)


# -- the checks themselves ----------------------------------------------------------------


def test_max_abs_propagates_nan_and_inf_and_does_not_overflow():
    t = torch.full((1000,), 3e38)
    assert max_abs(t) == pytest.approx(3e38, rel=1e-6)  # a float32 sum would be inf
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = t.clone()
        u[500] = bad
        assert not max_abs(u) <= F32_MAX
    assert max_abs(torch.empty(0, 3)) == 0.0


def test_delta_problem_bounds_then_forms_the_product_only_when_needed():
    A, B = torch.randn(4, 32), torch.randn(16, 4)
    assert delta_problem(A, B, 2.0) is None
    assert "delta" in delta_problem(A * 1e20, B * 1e20, 1.0)  # finite factors, overflowing product
    assert "scale" in delta_problem(A, B, 1e39)
    assert "lora_B holds" in delta_problem(A, B.double() * 1e300, 1.0)  # float64 beyond float32
    assert "NaN or Inf" in delta_problem(A, B.index_fill(0, torch.tensor([3]), float("nan")), 1.0)
    assert "floating point" in delta_problem(A.int(), B, 1.0)
    # The bound is loose when entries cancel: the product (all zeros) is formed and found fine.
    A2 = torch.tensor([[1e20], [-1e20]])
    B2 = torch.tensor([[1e20, 1e20]])
    assert delta_problem(A2, B2, 1.0) is None
    # float16 outputs are held to float16's range
    assert "float16" in delta_problem(torch.ones(1, 4), torch.full((4, 1), 1e5), 1.0, limit=torch.finfo(torch.float16).max)


# -- overflowing inputs, on the API --------------------------------------------------------


def test_alpha_beyond_float32_is_refused_at_load(tiny_base, tmp_path):
    big = write_adapter(tmp_path / "big", tiny_base, alpha=1e308)
    with pytest.raises(AdapterMergeError, match=r"big/adapter_config.json: lora_alpha must be a positive finite number") as info:
        load_adapter(big)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["linear", "sequential", "ties", "dare_ties", "cat", "task_arithmetic", "breadcrumbs", "dora"])
def test_overflowing_delta_names_module_and_input(tiny_base, tmp_path, ok, method):
    # finite factors (1e20 each) whose product (about 1e41) is past float32
    bad = write_adapter(tmp_path / "bad", tiny_base, a_scale=1e20, b_scale=1e20, seed=2)
    before = digest(ok, bad, tiny_base)
    adapters = [load_adapter(ok), load_adapter(bad)]
    pattern = r"adapter bad \(.*bad\): module model\.layers\.0\.self_attn\.q_proj has a delta .* beyond the range of float32"
    with pytest.raises(AdapterMergeError, match=pattern):
        merge(adapters, method, base=str(tiny_base))
    with pytest.raises(AdapterMergeError, match=pattern):
        merge_to_model(adapters, tmp_path / "model", method, base=str(tiny_base))
    assert not (tmp_path / "model").exists()
    assert digest(ok, bad, tiny_base) == before


def test_alpha_within_range_whose_scale_overflows_the_factors(tiny_base, tmp_path, ok):
    bad = write_adapter(tmp_path / "bad", tiny_base, alpha=3e38, r=1, b_scale=100.0)
    with pytest.raises(AdapterMergeError, match=r"module model\.layers\.0\.self_attn\.q_proj has scale \* lora_B reaching .* \(lora_alpha 3e\+38"):
        merge([load_adapter(ok), load_adapter(bad)], "ties", base=str(tiny_base))


@pytest.mark.parametrize("method", ["task_arithmetic", "sequential", "ties"])
def test_a_sum_of_finite_deltas_that_overflows_names_module_and_inputs(tiny_base, tmp_path, method):
    # each delta is finite (about 1e38 at most), their sum is not
    a = write_adapter(tmp_path / "a", tiny_base, a_scale=1e18, b_scale=1e19, seed=3)
    b = write_adapter(tmp_path / "b", tiny_base, a_scale=1e18, b_scale=1e19, seed=3)
    adapters = [load_adapter(a), load_adapter(b)]
    with pytest.raises(AdapterMergeError, match=rf"module model\.layers\.0\.self_attn\.q_proj: the merged .*merging adapter a .* with {method}"):
        merge(adapters, method, [3.0, 3.0], base=str(tiny_base))
    with pytest.raises(AdapterMergeError, match=r"module model\.layers\.0\.self_attn\.q_proj: the merged"):
        merge_to_model(adapters, tmp_path / "model", method, [3.0, 3.0], base=str(tiny_base))
    assert not (tmp_path / "model").exists()


def test_float16_outputs_are_checked_in_float16(tiny_base, tmp_path):
    # float16 factors give a float16 adapter: merged factors past 65504 would be written as Inf
    a = write_adapter(tmp_path / "a", tiny_base, alpha=4e6, r=4, a_scale=100.0, b_scale=100.0, dtype=torch.float16)
    with pytest.raises(AdapterMergeError, match=r"module model\.layers\.0\.self_attn\.q_proj: the merged factors: .*float16"):
        merge([load_adapter(a)], "linear", base=str(tiny_base))


def test_float16_base_weight_past_its_range(tmp_path):
    from transformers import LlamaForCausalLM

    from support import tiny_config

    torch.manual_seed(0)
    base = tmp_path / "base16"
    LlamaForCausalLM(tiny_config()).half().save_pretrained(base)
    a = write_adapter(tmp_path / "a", base, alpha=8.0, a_scale=100.0, b_scale=100.0)  # a delta near 1e5
    with pytest.raises(AdapterMergeError, match=r"module model\.layers\.0\.self_attn\.q_proj: the merged weight exceeds the range of F16"):
        merge_to_model([load_adapter(a)], tmp_path / "model", "linear", base=str(base))
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob(".model*"))


def test_saving_an_adapter_with_overflowing_factors_is_refused(tmp_path):
    f = LoraFactors(torch.full((1, 8), 1e20), torch.full((8, 1), 1e20), 1.0, 1.0)
    ad = Adapter.from_factors("made", {"model.layers.0.self_attn.q_proj": f}, base_model=None)
    with pytest.raises(AdapterMergeError, match="adapter made: module model.layers.0.self_attn.q_proj has a delta"):
        ad.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("alpha, scale", [(-1.0, -1.0), (0.0, 0.0), (float("nan"), 1.0), (1.0, float("inf"))])
def test_from_factors_checks_alpha_and_scale_like_every_source(alpha, scale):
    f = LoraFactors(torch.ones(1, 8), torch.ones(8, 1), alpha, scale)
    with pytest.raises(AdapterMergeError, match="must be a positive finite number"):
        Adapter.from_factors("made", {"m": f}, base_model=None)


# -- the same on the command line ----------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "sequential", "ties"])
@pytest.mark.parametrize("output", ["adapter", "model"])
def test_cli_refuses_alpha_1e308(tiny_base, tmp_path, ok, capsys, method, output):
    big = write_adapter(tmp_path / "big", tiny_base, alpha=1e308)
    before = digest(ok, big, tiny_base)
    out = tmp_path / "out"
    code, err = cli([method, ok, big, "-o", out, "--output", output, "--base", tiny_base], capsys)
    assert code == 2 and len(err) == 1 and "lora_alpha" in err[0] and "1e+308" in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert digest(ok, big, tiny_base) == before


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties"])
@pytest.mark.parametrize("output", ["adapter", "model"])
def test_cli_refuses_overflowing_factors(tiny_base, tmp_path, ok, capsys, method, output):
    bad = write_adapter(tmp_path / "bad", tiny_base, a_scale=1e20, b_scale=1e20, seed=2)
    before = digest(ok, bad, tiny_base)
    out = tmp_path / "out"
    code, err = cli([method, ok, bad, "-o", out, "--output", output, "--base", tiny_base], capsys)
    assert code == 2 and len(err) == 1, err
    assert "module model.layers.0.self_attn.q_proj" in err[0] and "bad" in err[0] and "float32" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert digest(ok, bad, tiny_base) == before


@pytest.mark.parametrize("size", ["infGB", "1e400B", "nanMB", "-1GB", "2PB"])
def test_cli_refuses_shard_sizes_that_are_no_size(tiny_base, tmp_path, ok, capsys, size):
    out = tmp_path / "out"
    code, err = cli(["linear", ok, "-o", out, "--output", "model", "--base", tiny_base, "--shard-size", size], capsys)
    assert code == 2 and len(err) == 1 and "--shard-size" in err[0], err
    assert not out.exists()
