"""Code that runs first in a fresh interpreter (``python -I``) to prove a saved model loads
without mixprec: it makes ``import mixprec`` (and this test package) fail."""
import textwrap

BLOCK_MIXPREC = textwrap.dedent("""
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("mixprec", "tests"):
                raise ImportError(name + " is not available here")
            return None

    sys.meta_path.insert(0, _Blocked())
""")
