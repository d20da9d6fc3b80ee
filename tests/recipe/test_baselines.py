import pytest
import torch

from adaptermerge.adapter import load_adapter
from adaptermerge.recipe import baselines
from support import make_adapter, peft_deltas


@pytest.fixture(scope="module")
def mixed(tiny_base, tmp_path_factory):
    """Adapters of ranks 4 and 2 (the second with rsLoRA) on this folder's tiny base."""
    root = tmp_path_factory.mktemp("mixed")
    return {"a": make_adapter(tiny_base, root / "a", seed=1, r=4, alpha=8),
            "c": make_adapter(tiny_base, root / "c", seed=3, r=2, alpha=2, rslora=True)}


def test_pad_to_rank_keeps_every_delta_as_peft_applies_it(tiny_base, mixed, tmp_path):
    # "c" is rank 2 with rsLoRA: the padded copy must keep alpha / sqrt(2) as its scale.
    padded = baselines.pad_to_rank(mixed["c"], 8, tmp_path / "c8")
    assert {s.rank for s in load_adapter(padded).specs.values()} == {8}
    before, after = peft_deltas(tiny_base, mixed["c"]), peft_deltas(tiny_base, padded)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7)


def test_peft_factor_ties_runs_on_adapters_of_different_ranks(tiny_base, mixed, tmp_path):
    pair = mixed  # ranks 4 and 2
    out = baselines.peft_merge(pair, tmp_path / "merged", "ties", base=str(tiny_base), weights=[1.0, 1.0],
                               density=0.5, work=tmp_path / "work")
    assert {s.rank for s in load_adapter(out).specs.values()} == {4}
    assert (tmp_path / "work" / "c-r4").is_dir() and not (tmp_path / "work" / "a-r4").exists()
