"""Build the Cython kernels (cython_ext/) into fpfs._kernels; metadata lives in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fpfs._kernels",
        ["cython_ext/kernels.pyx"],
        extra_compile_args=["-O3"],
        include_dirs=["cython_ext"],
        depends=["cython_ext/rans.pxi", "cython_ext/planes.pxi", "cython_ext/transforms.pxi",
                 "cython_ext/expmant.pxi", "cython_ext/fpfs_decode.h",
                 "cython_ext/fpfs_errors.h", "cython_ext/fpfs_expmant.h",
                 "cython_ext/fpfs_rans32.h", "cython_ext/fpfs_rans32_enc.h",
                 "cython_ext/fpfs_simd.h", "cython_ext/fpfs_table.h"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
