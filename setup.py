"""The one thing pyproject.toml cannot say: the optional C extension of the merge kernels.

`adaptermerge.methods._native_ext` (adaptermerge/methods/_native.c) is built at install time with
portable flags: no -march=native; the source carries its own AVX2 and AVX-512 variants and picks
one at run time. It is optional: without a working C compiler the install still succeeds, with a
note from setuptools, and the merge runs the pure-PyTorch kernels (bit-identical, slower).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -ffp-contract=off: no fused multiply-adds; the kernels must round as the reference math does.
UNIX_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-strict-aliasing"]
MSVC_FLAGS = ["/O2", "/fp:precise"]


class BuildExt(build_ext):
    def build_extensions(self):
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = [*flags, *ext.extra_compile_args]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "adaptermerge.methods._native_ext",
            sources=["adaptermerge/methods/_native.c"],
            optional=True,  # a failed build is a note, not a failed install
            py_limited_api=True,  # one abi3 binary for every CPython from 3.10
            define_macros=[("Py_LIMITED_API", "0x030A0000")],
        )
    ],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
