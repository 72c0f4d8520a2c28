"""Build of the optional compiled kernel; everything else is in pyproject.toml.

The kernel removes per-call overhead for small models; if it cannot be
compiled the package falls back to the numpy implementation.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "multilevel._kernels",
            sources=["src/multilevel/_kernels.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
