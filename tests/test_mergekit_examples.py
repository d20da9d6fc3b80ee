"""mergekit's official example configs through `adaptermerge merge`, and the same merges by mergekit.

The examples are those of the mergekit repository's examples/ folder (arcee-ai/mergekit), their
keys and values transcribed with each model replaced by a placeholder: {base} for the base model,
{m0}, {m1}, {m2} for the fine-tuned models. Here a placeholder becomes a tiny PEFT adapter; for
mergekit it becomes `BASE+ADAPTER`, mergekit's own syntax for a LoRA folded into its base, so both
tools merge the same deltas. The examples that run must give mergekit's weights (mergekit 0.1.5 is
the reference when installed; without it only our side runs); the rest must stop with one line
that names what is not supported. docs/mergekit.md has the table of defaults these checks pin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from adaptermerge.cli.main import main

# examples/linear.yml
LINEAR = """\
models:
  - model: {m0}
    parameters:
      weight: 1.0
  - model: {m1}
    parameters:
      weight: 0.3
  - model: {m2}
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
"""

# examples/vlm-linear.yml
VLM_LINEAR = """\
models:
  - model: {m0}
    parameters:
      weight: 1.0
  - model: {m1}
    parameters:
      weight: 1.0
merge_method: linear
dtype: float32
"""

# examples/bio-merge.yml
BIO_MERGE = """\
models:
  - model: {m0}
    parameters:
      density: 0.5
      weight: 0.5
  - model: {m1}
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: {base}
parameters:
  normalize: false
  int8_mask: true
dtype: float16
"""

RUNS = {"linear.yml": LINEAR, "vlm-linear.yml": VLM_LINEAR, "bio-merge.yml": BIO_MERGE}

# examples that mean something adapters merged whole in delta space cannot: (text, what the error names)
REFUSED = {
    # per-layer gradients and filters of density and weight
    "ties.yml": ("""\
models:
  - model: {m0}
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: {m1}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: {m2}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: float16
""", "models[0] density must be a number, got [1, 0.7, 0.1]: mergekit's per-layer gradients and filters are not supported"),
    "vlm-ties.yml": ("""\
models:
  - model: {m0}
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: {m1}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: float16
""", "models[0] density must be a number, got [1, 0.7, 0.1]"),
    "gradient-slerp.yml": ("""\
slices:
  - sources:
      - model: {m0}
        layer_range: [0, 40]
      - model: {m1}
        layer_range: [0, 40]
merge_method: slerp
base_model: {m0}
parameters:
  t:
    - pattern: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - pattern: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
""", "slices (mergekit's layer slices) is not supported here"),
    "orcamini-platy-44layer.yml": ("""\
slices:
  - sources:
    - model: {m0}
      layer_range: [0, 24]
  - sources:
    - model: {m1}
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
""", "slices (mergekit's layer slices) is not supported here"),
    "arcee_fusion.yml": ("""\
models:
  - model: {m0}
  - model: {m1}
merge_method: arcee_fusion
base_model: {m0}
dtype: bfloat16
""", "merge_method: arcee_fusion is a mergekit method with no delta-space form here"),
    "lrp.yml": ("""\
merge_method: lrp
base_model: {base}
parameters:
  density: 0.7
models:
  - model: {m0}
    parameters:
      weight: 1.0
  - model: {m1}
    parameters:
      weight: 1.0
dtype: float16
""", "merge_method must be one of linear"),
}


def _fill(template: str, models: list[str], base: str) -> str:
    return template.format(base=base, **{f"m{i}": m for i, m in enumerate(models)})


def _run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def inputs(adapters) -> list[str]:
    """Three adapters: ranks 4, 8, 2; b on four module kinds only (missing modules are zero deltas);
    c with rsLoRA."""
    return [str(adapters["a"]), str(adapters["b"]), str(adapters["c"])]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_an_official_example_runs_unchanged_apart_from_its_model_paths(name, tiny_base, inputs, tmp_path, capsys):
    import json

    text = _fill(RUNS[name], inputs, str(tiny_base))
    config = tmp_path / name
    config.write_text(text)
    code, out, err = _run(["merge", config, "-o", tmp_path / "merged"], capsys)
    assert code == 0, err
    raw = yaml.safe_load(text)
    meta = json.loads((tmp_path / "merged" / "adaptermerge.json").read_text())
    assert meta["method"] == raw["merge_method"] and meta["dtype"] == raw["dtype"]
    assert {t.dtype for t in _weights(tmp_path / "merged").values()} == {getattr(torch, raw["dtype"])}
    # the file's weights as given (linear normalizes them in the method, as mergekit does)
    assert meta["weights"] == [m["parameters"]["weight"] for m in raw["models"]]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_official_example_that_cannot_mean_the_same_is_one_line(name, tiny_base, inputs, tmp_path, capsys):
    text, needle = REFUSED[name]
    config = tmp_path / name
    config.write_text(_fill(text, inputs, str(tiny_base)))
    code, out, err = _run(["merge", config, "-o", tmp_path / "merged"], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err and str(config) in err, err
    assert not (tmp_path / "merged").exists()


# ---------------------------------------------------------------- against mergekit itself

# Merges of the same deltas that both tools must agree on, the official examples first. A random
# DARE drop differs between the tools, so DARE is compared at density 1 (mergekit's default: no
# drop), where what is compared is the combination, its normalization included.
MODELS2 = "models:\n  - model: {m0}\n    parameters: {{weight: 0.6}}\n  - model: {m2}\n    parameters: {{weight: 0.4}}\n"
COMPARED = {
    **{name: RUNS[name] for name in RUNS},
    "ties-defaults": MODELS2 + "merge_method: ties\nbase_model: {base}\n",
    "task_arithmetic": MODELS2 + "merge_method: task_arithmetic\nbase_model: {base}\nparameters: {{lambda: 0.5, normalize: true}}\n",
    "dare_ties-defaults": MODELS2 + "merge_method: dare_ties\nbase_model: {base}\n",
    "dare_ties-normalize": MODELS2 + "merge_method: dare_ties\nbase_model: {base}\nparameters: {{normalize: true, rescale: true}}\n",
    "dare_linear-defaults": MODELS2 + "merge_method: dare_linear\nbase_model: {base}\n",
    "breadcrumbs": (MODELS2.replace("weight: 0.6", "weight: 0.6, density: 0.5, gamma: 0.125").replace("weight: 0.4", "weight: 0.4, density: 0.5, gamma: 0.125")
                    + "merge_method: breadcrumbs\nbase_model: {base}\n"),
    "linear-with-base": ("models:\n  - model: {base}\n    parameters: {{weight: 1.0}}\n  - model: {m0}\n    parameters: {{weight: 1.0}}\n"
                         "  - model: {m2}\n    parameters: {{weight: 2.0}}\nmerge_method: linear\nbase_model: {base}\n"),
}


def _mergekit_merge(config: dict, out: Path, cache: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(lora_merge_cache=str(cache), copy_tokenizer=False, quiet=True, write_model_card=False)
    run_merge(MergeConfiguration.model_validate(config), str(out), options)


@pytest.mark.parametrize("name", sorted(COMPARED))
def test_the_merged_weights_are_mergekits(name, tiny_base, inputs, tmp_path, tmp_path_factory, capsys):
    """Full-model output (exact, no truncation) in float32 against mergekit's merge of the dense
    models. Ours: the file with the adapters, `output: model`. mergekit: the file with BASE+ADAPTER
    models; its linear takes no base_model (it would average the base in as a model)."""
    pytest.importorskip("mergekit.merge")
    template = COMPARED[name]
    ours = yaml.safe_load(_fill(template, inputs, str(tiny_base)))
    ours.update(dtype="float32", output="model", base_model=str(tiny_base))
    theirs = yaml.safe_load(_fill(template, [f"{tiny_base}+{m}" for m in inputs], str(tiny_base)))
    theirs["dtype"] = "float32"
    if theirs["merge_method"] == "linear" and all(m["model"] != str(tiny_base) for m in theirs["models"]):
        theirs.pop("base_model", None)
    config = tmp_path / "ours.yaml"
    config.write_text(yaml.safe_dump(ours))
    code, _, err = _run(["merge", config, "-o", tmp_path / "ours"], capsys)
    assert code == 0, err
    _mergekit_merge(theirs, tmp_path / "mergekit", tmp_path_factory.getbasetemp() / "mergekit-lora-cache")

    base, got, want = _weights(tiny_base), _weights(tmp_path / "ours"), _weights(tmp_path / "mergekit")
    assert got.keys() == want.keys() == base.keys()
    changed = 0
    for key, w0 in base.items():
        delta, expected = got[key] - w0, want[key] - w0
        scale = expected.abs().max().item()
        # float32 rounding: of the merged delta, and of mergekit's sums of whole weights (its linear
        # averages the untouched tensors too, which comes back within an ulp of them)
        tolerance = 1e-5 * scale + 1e-6 * w0.abs().max().item()
        assert (delta - expected).abs().max().item() <= tolerance, (name, key)
        changed += scale > 1e-6 * w0.abs().max().item()
    assert changed >= 14  # every layer's targeted projections moved: the comparison is not of zeros


# ---------------------------------------------------------------- the undivided TIES sum


def test_ties_without_normalizing_sums_the_agreeing_entries():
    """math.ties(normalize=False), which mergekit's dare_ties does by default, against an
    independent computation, and every CPU backend bit for bit against it."""
    from adaptermerge.methods import backends, math
    from adaptermerge.methods.backends import Backend

    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4096, generator=g)
    values[:, :64] = 0.0  # entries where nothing is left
    cuts = torch.tensor([0.5, 0.0, 1.0])
    weights = [1.0, -0.5, 2.0]
    kept = torch.where(values.abs() >= cuts[:, None], values, torch.zeros(()))
    sign = kept.sum(0).sign()
    expected = sum(torch.where(row * sign > 0, row, torch.zeros(())) for row in kept)
    got = math.ties(values, cuts, torch.tensor(weights), normalize=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, math.ties(values, cuts, torch.tensor(weights)))  # dividing differs
    for backend in (Backend.REFERENCE, Backend.EAGER, Backend.NATIVE):
        merged, _ = backends.ties(values, cuts, weights, backend=backend, normalize=False)
        assert torch.equal(merged, got), backend
