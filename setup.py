"""Build of the optional compiled kernels (``_kernels``: LMM criterion and
per-level cross-products; ``_glmm_kernels``: GLMM deviances and gradients;
``_optim``: the bounded BFGS search over θ; ``_sparse_chol``:
sparse Cholesky and selected inverse of the random effects' Schur complement);
everything else is in pyproject.toml.

The kernels remove per-call overhead and temporaries; if one cannot be
compiled the package falls back to the numpy implementation.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "multilevel._kernels",
            sources=["src/multilevel/_kernels.c"],
            depends=["src/multilevel/_lapack.h"],
            # Python's own -fwrapv (signed overflow defined) keeps the compiler
            # from simplifying the small loops' index arithmetic: 5-19% per
            # evaluation here; these kernels never overflow an index
            extra_compile_args=["-O3", "-fno-wrapv"],
            optional=True,
        ),
        Extension(
            "multilevel._glmm_kernels",
            sources=["src/multilevel/_glmm_kernels.c"],
            depends=["src/multilevel/_lapack.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "multilevel._sparse_chol",
            sources=["src/multilevel/_sparse_chol.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "multilevel._optim",
            sources=["src/multilevel/_optim.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
