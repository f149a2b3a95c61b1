"""The one compiled piece, nnctl.core._loops (optimizer updates, relu, the loss's passes, the batch
gather and the finite check, one loop each, on a pool of threads shared with NumPy's OpenBLAS). It
is optional: without a C compiler the install still succeeds and nnctl runs the same
arithmetic as NumPy passes, with bit-identical results. Everything else about the package is in
pyproject.toml."""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# No FMA contraction and no errno from sqrt: the loop must round exactly as NumPy's passes do,
# and must vectorise. -pthread: the pool's threads (a separate libpthread before glibc 2.34).
FLAGS = {"msvc": ["/O2", "/fp:precise"]}
UNIX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-pthread"]
LINK_FLAGS = {"msvc": []}
UNIX_LINK_FLAGS = ["-pthread"]


class BuildExt(build_ext):
    def build_extensions(self):
        for extension in self.extensions:
            extension.extra_compile_args = FLAGS.get(self.compiler.compiler_type, UNIX_FLAGS)
            extension.extra_link_args = LINK_FLAGS.get(self.compiler.compiler_type, UNIX_LINK_FLAGS)
        super().build_extensions()


setup(
    ext_modules=[Extension("nnctl.core._loops", ["nnctl/core/_loops.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
