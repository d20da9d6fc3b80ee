import pytest

from adaptermerge.errors import AdapterMergeError
from adaptermerge.evalsuite import candidates


def test_auto_dtype_resolves_to_a_concrete_dtype():
    import torch

    resolved = candidates.resolve_dtype("auto")
    assert resolved in candidates.DTYPES
    if not torch.cuda.is_available() and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert resolved == "float32"  # emulated bf16 would be slower, not faster


def test_explicit_dtype_is_kept_and_unknown_is_refused():
    assert candidates.resolve_dtype("float32") == "float32"
    with pytest.raises(AdapterMergeError, match="float16.*auto, float32, bfloat16"):
        candidates.resolve_dtype("float16")
