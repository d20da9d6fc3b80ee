import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import candidates


def test_auto_dtype_resolves_to_a_concrete_dtype():
    import torch

    resolved = candidates.resolve_dtype("auto")
    assert resolved in candidates.DTYPES
    if not torch.cuda.is_available():
        # bf16 only with hardware bf16 (AVX512-BF16 or AMX): emulated it is ~4x slower than float32.
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        assert resolved == ("bfloat16" if native else "float32")


def test_emulated_bf16_is_not_taken_for_native(monkeypatch):
    import torch

    from adaptermerge import base

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert base.resolve_dtype("auto") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert base.resolve_dtype("auto") == "bfloat16"


def test_explicit_dtype_is_kept_and_unknown_is_refused():
    assert candidates.resolve_dtype("float32") == "float32"
    with pytest.raises(AdapterMergeError, match="float16.*auto, float32, bfloat16"):
        candidates.resolve_dtype("float16")
