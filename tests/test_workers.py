import threading

import pytest
import torch

from adaptermerge import load_adapter, merge
from adaptermerge.errors import AdapterMergeError
from adaptermerge.workers import heap_reuse, ordered_map, worker_count


def test_ordered_map_keeps_order_reads_on_caller_and_runs_small_items_on_one_thread_each(two_threads):
    main = threading.get_ident()
    seen = {}

    def read(item):
        assert threading.get_ident() == main  # safetensors handles are used from one thread
        return item * 10

    def compute(item, value):
        seen[item] = (threading.get_ident(), torch.get_num_threads())
        return value + 1

    items = [0, 1, 2, 3, 100, 4, 5, 200]  # >= 100: large
    out = list(ordered_map(items, read, compute, small=lambda i: i < 100, workers=2))
    assert out == [(i, i * 10 + 1) for i in items]
    for i in items:
        ident, threads = seen[i]
        if i >= 100:
            assert ident == main and threads == 2  # alone, with every thread
        else:
            assert ident != main and threads == 1
    assert torch.get_num_threads() == 2  # restored


def test_ordered_map_passes_errors_on_and_restores_threads(two_threads):
    def compute(item, value):
        if item == 2:
            raise AdapterMergeError("module 2: bad")
        return item

    with pytest.raises(AdapterMergeError, match="module 2"):
        list(ordered_map(range(5), lambda i: i, compute, small=lambda i: True, workers=2))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_worker_setting_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("ADAPTERMERGE_WORKERS", value)
    with pytest.raises(AdapterMergeError, match="ADAPTERMERGE_WORKERS must be a positive integer"):
        worker_count(torch.device("cpu"))


def test_worker_count_follows_threads_and_setting(monkeypatch, two_threads):
    monkeypatch.delenv("ADAPTERMERGE_WORKERS", raising=False)
    assert worker_count(torch.device("cpu")) == 2
    assert worker_count(torch.device("cuda")) == 1
    monkeypatch.setenv("ADAPTERMERGE_WORKERS", "3")
    assert worker_count(torch.device("cpu")) == 3


@pytest.mark.parametrize("method,params", [("ties", {"density": 0.3}), ("linear", {}), ("dare_ties", {"density": 0.5})])
def test_parallel_merge_equals_sequential_bit_for_bit(adapters, monkeypatch, two_threads, method, params):
    inputs = [load_adapter(adapters[k]) for k in ("a", "b", "c")]
    results = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("ADAPTERMERGE_WORKERS", workers)
        results[workers] = merge(inputs, method, [1.0, 0.5, 2.0], seed=7, **params)
    one, two = results["1"], results["2"]
    assert list(one.specs) == list(two.specs)
    for m in one.specs:
        f1, f2 = one.factors(m), two.factors(m)
        assert torch.equal(f1.A, f2.A) and torch.equal(f1.B, f2.B), m
    assert one.metadata["modules"] == two.metadata["modules"]


def test_heap_reuse_uses_glibc_where_present_and_can_be_turned_off(monkeypatch):
    import platform

    from adaptermerge import workers

    monkeypatch.delenv("ADAPTERMERGE_MALLOPT", raising=False)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert workers._libc() is not None
    monkeypatch.setenv("ADAPTERMERGE_MALLOPT", "0")
    assert workers._libc() is None
    with heap_reuse():  # a no-op then, and still a context
        x = torch.ones(1 << 20)
    assert float(x.sum()) == 1 << 20


def test_a_slow_module_at_the_front_does_not_idle_the_other_workers():
    """With two workers, module 0 runs until module 3 has started: that needs modules 1-3 submitted
    while module 0 (whose result is yielded first) is still running."""
    import threading

    from adaptermerge.workers import ordered_map

    started = {i: threading.Event() for i in range(6)}

    def compute(i, _):
        started[i].set()
        if i == 0:
            return started[3].wait(timeout=10)
        return True

    results = list(ordered_map(range(6), lambda i: None, compute, lambda i: True, workers=2))
    assert [i for i, _ in results] == list(range(6))
    assert results[0][1], "module 3 did not start while module 0 ran"
