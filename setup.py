"""Build the Cython extensions under cext/ against DPDK (pkg-config libdpdk).

Everything else about the package is declared in setup.cfg; only the
extension list needs code, because its compiler flags come from pkg-config.
"""

import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(
            ["pkg-config", *args, "libdpdk"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(
            f"pkg-config could not find libdpdk ({exc}); install libdpdk-dev "
            "(tools/setup-host does) before building quadrant"
        )
    return shlex.split(out)


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    cflags = [f for f in pkg_config("--cflags") if not f.startswith("-march")]
    # DPDK's pkg-config asks for -march=corei7; build for the machine we run on
    # instead so the data path gets the host's vector units (SSE4.2/AVX2).
    cflags += ["-march=native", "-O3", "-Wno-deprecated-declarations"]
    ldflags = pkg_config("--libs")
    exts = [
        Extension(
            f"cext.{pyx.stem}",
            [str(pyx)],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            include_dirs=["cext"],
            # rebuild when a hand-written header changes, not only the .pyx
            depends=sorted(str(h) for h in Path("cext/src").glob("*.h")),
        )
        for pyx in sorted(Path("cext").glob("*.pyx"))
    ]
    return cythonize(exts, language_level=3, compiler_directives={"embedsignature": True})


setup(ext_modules=extensions())
