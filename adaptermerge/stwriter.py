"""Write a safetensors file one tensor at a time, so no shard is ever held whole in memory.

The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} (padded with spaces to a multiple of 8), then the tensors' bytes back to back in
header order. Knowing every name, dtype and shape up front (they come from the base's headers),
the header is written first and each tensor is streamed after it as it is computed.
"""

from __future__ import annotations

import json
import math
import struct
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    DTYPES.update({"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2})


def nbytes(dtype: str, shape) -> int:
    return math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()


class StreamingSafetensors:
    """`with StreamingSafetensors(path, [(name, dtype, shape), ...]) as w: w.write(name, tensor)` in that order."""

    def __init__(self, path: str | Path, layout: list[tuple[str, str, list[int]]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.layout = list(layout)
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, dtype, shape in self.layout:
            size = nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        self.header = text + b" " * (-len(text) % 8)
        self.next = 0

    def __enter__(self):
        self.file = open(self.path, "wb")
        try:
            with self._named_errors():
                self.file.write(struct.pack("<Q", len(self.header)))
                self.file.write(self.header)
        except BaseException:
            self.file.close()
            raise
        return self

    @contextmanager
    def _named_errors(self):
        """A failed write (a full disk) says which file: file.write's OSError names none."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, dtype, shape = self.layout[self.next]
        if name != want or tensor.dtype != DTYPES[dtype] or list(tensor.shape) != list(shape):
            raise ValueError(f"{self.path.name}: expected {want} {dtype} {list(shape)}, got {name} {tensor.dtype} {list(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        with self._named_errors():
            self.file.write(memoryview(data))
        self.next += 1

    def __exit__(self, kind, value, tb):
        with self._named_errors():
            self.file.close()  # flushes: a full disk can show here first
        if kind is None and self.next != len(self.layout):
            raise ValueError(f"{self.path.name}: {len(self.layout) - self.next} tensors were never written")
        return False
