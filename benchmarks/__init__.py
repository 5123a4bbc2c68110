"""Scripts that print measured figures: ``python benchmarks/<name>.py``.

Scripts, not part of the library: they import ``gan_modules``, ``datamodules`` and ``train``, the
tests import them (as ``benchmarks.<name>``), and they import no test.
"""
