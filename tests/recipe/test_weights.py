"""The weight search: its pure parts (proxy retention, coordinate search within a drift budget)
on synthetic scores, and the model side on a tiny chat Llama with real PEFT adapters: the stack
of adapters at weights w computes exactly the task_arithmetic merge with weights w."""

from __future__ import annotations

import math

import pytest

from support import make_adapter

TASKS = ("domain", "structured", "safety")


def test_proxy_retention_is_the_share_of_the_single_adapters_loss_gain():
    from adaptermerge.recipe.weights import proxy_retention

    assert proxy_retention(3.0, 1.0, 2.0) == pytest.approx(0.5)
    assert proxy_retention(3.0, 1.0, 1.0) == pytest.approx(1.0)
    assert proxy_retention(3.0, 1.0, 3.5) == pytest.approx(-0.25)
    assert proxy_retention(2.0, 2.0, 1.0) is None  # the adapter gains nothing: undefined


def _synthetic(target, drift_scale=1.0):
    """Retention of task i peaks (at 1) when w_i reaches target[i]; drift grows with sum(w)."""
    from adaptermerge.recipe.weights import Point

    calls = []

    def score(w):
        calls.append(w)
        ret = {f"t{i}": 1.0 - abs(math.log(w[i] / t)) for i, t in enumerate(target)}
        return Point(tuple(w), ret, drift_scale * sum(w))

    return score, calls


def test_coordinate_search_raises_the_worst_task_and_only_moves_when_it_helps():
    from adaptermerge.recipe.weights import coordinate_search

    score, calls = _synthetic([1.0, 1.4, 0.8])
    result = coordinate_search(score, 3, slack=10.0)
    assert result.start.weights == (1.0, 1.0, 1.0)
    assert result.best.worst > result.start.worst + 0.1
    assert result.best.weights[0] == 1.0  # task 0 was already at its peak: never moved
    assert result.best.weights[1] > 1.0 and result.best.weights[2] < 1.0
    assert len(result.trace) == len(calls)


def test_coordinate_search_rejects_points_over_the_drift_budget():
    from adaptermerge.recipe.weights import coordinate_search

    # Raising w_1 is the only way up, but every raise costs drift above 1.05x the start's.
    score, _ = _synthetic([1.0, 1.4, 1.0])
    result = coordinate_search(score, 3, slack=1.05)
    assert result.best.weights[1] <= 1.0
    assert result.best.drift <= result.start.drift * 1.05


@pytest.fixture(scope="module")
def task_adapters(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("ws_adapters")
    return {t: make_adapter(tiny_base, root / t, seed=10 + i, r=4, alpha=8) for i, t in enumerate(TASKS)}


def test_the_adapter_stack_at_weights_w_is_the_task_arithmetic_merge(tiny_base, task_adapters, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptermerge import load_adapter, merge
    from adaptermerge.recipe.weights import AdapterStack

    weights = [0.7, 1.3, 0.4]
    merged = merge([load_adapter(p) for p in task_adapters.values()], "task_arithmetic", weights)
    merged.save(tmp_path / "ta")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "ta").eval()
    stack = AdapterStack(str(tiny_base), task_adapters)
    stack.set_weights(dict(zip(TASKS, weights)))
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = reference(input_ids=ids).logits, stack.model(input_ids=ids).logits
        stack.set_weights({t: 0.0 for t in TASKS})
        plain = AutoModelForCausalLM.from_pretrained(tiny_base)(input_ids=ids).logits
        zero = stack.model(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3  # the merge changes the output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(zero, plain, atol=1e-6, rtol=1e-5)


def test_search_weights_runs_on_real_adapters_and_never_ends_below_its_start(tiny_base, task_adapters):
    from adaptermerge.recipe.weights import FACTORS, search_weights

    seen = []
    result = search_weights(str(tiny_base), task_adapters, per_task=3, rounds=1, progress=lambda n, label: seen.append(n))
    assert len(result.trace) == len(seen) <= 1 + len(TASKS) * len(FACTORS)
    assert result.best.worst >= result.start.worst
    assert set(result.start.retention) == set(TASKS)
    assert all(math.isfinite(p.drift) and p.drift >= 0 for p in result.trace)
    assert result.start.drift > 0  # the adapters move the general prompts' distributions
    data = result.as_dict()
    assert data["best"]["weights"] == list(result.best.weights) and data["points"] == len(result.trace)


def test_the_stack_refuses_dora_and_missing_adapters_by_name(tiny_base, task_adapters, tmp_path):
    from adaptermerge.recipe.weights import AdapterStack
    from adaptermerge.errors import AdapterMergeError

    dora = make_adapter(tiny_base, tmp_path / "dora", seed=20, r=4, alpha=8, dora=True)
    with pytest.raises(AdapterMergeError, match=r"adapter safety .* is DoRA"):
        AdapterStack(str(tiny_base), {**task_adapters, "safety": dora})
    with pytest.raises(AdapterMergeError, match="nowhere"):
        AdapterStack(str(tiny_base), {**task_adapters, "safety": tmp_path / "nowhere"})
