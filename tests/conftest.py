"""Shared fixtures: a tiny random Llama (hidden 32, 2 layers) saved as safetensors, and real PEFT
adapters made on it. Everything offline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The machine's thread count as adaptermerge sees it (cputhreads.machine_threads), for training
# and evaluation in this process and in the processes it spawns: one, like _one_thread below.
os.environ["OMP_NUM_THREADS"] = "1"
warnings.filterwarnings("ignore", message=".*kernels.*")

import pytest  # noqa: E402
import torch  # noqa: E402

from support import make_adapter, tiny_config  # noqa: E402,F401


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep caches out of the home folder; reuse a converted embedded base when one exists."""
    if "ADAPTERMERGE_CACHE" not in os.environ:
        os.environ["ADAPTERMERGE_CACHE"] = str(Path.home() / ".cache" / "adaptermerge")
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One torch thread: the tests' tensors are tiny, and on a shared 2-core machine two threads
    per process oversubscribe the cores and run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_tiny_llama(path: Path, **overrides) -> Path:
    """A random tiny Llama (seed 0) saved as safetensors at `path`."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(**overrides)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(tiny_base, root / "a", seed=1, r=4, alpha=8),
        "b": make_adapter(tiny_base, root / "b", seed=2, r=8, alpha=4, targets=["q_proj", "v_proj", "down_proj", "up_proj"]),
        "c": make_adapter(tiny_base, root / "c", seed=3, r=2, alpha=2, rslora=True),
        "dora": make_adapter(tiny_base, root / "dora", seed=4, r=4, alpha=8, dora=True),
        "dora2": make_adapter(tiny_base, root / "dora2", seed=5, r=2, alpha=4, dora=True, targets=["q_proj", "v_proj", "o_proj"]),
        "pattern": make_adapter(tiny_base, root / "pattern", seed=6, r=4, alpha=8, rank_pattern={"down_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3}),
    }


@pytest.fixture(scope="session")
def quant_base(tmp_path_factory) -> Path:
    """A tiny Llama with rows a multiple of bitsandbytes' NF4 block (64), tied embeddings like SmolLM2."""
    return _save_tiny_llama(tmp_path_factory.mktemp("quant_base"), hidden_size=64, intermediate_size=128,
                            tie_word_embeddings=True)


@pytest.fixture(scope="session")
def quant_adapters(quant_base, tmp_path_factory) -> dict[str, Path]:
    """Adapters on quant_base: one on all projections, one on q/v only (so other Linears are not targets)."""
    root = tmp_path_factory.mktemp("quant_adapters")
    return {
        "all": make_adapter(quant_base, root / "all", seed=11, r=4, alpha=8),
        "qv": make_adapter(quant_base, root / "qv", seed=12, r=4, alpha=8, targets=["q_proj", "v_proj"]),
    }


@pytest.fixture
def two_threads():
    """torch at 2 threads for the test, the caller's count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
