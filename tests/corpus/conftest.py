"""Without ``-m``, only the corpus's CI subset runs (the rest is deselected, not skipped);
``pytest -m corpus`` runs every entry."""
from pathlib import Path

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if config.option.markexpr:
        return
    keep, drop = [], []
    for item in items:
        in_corpus = Path(str(item.fspath)).parent == HERE
        (drop if in_corpus and item.get_closest_marker("corpus") and not item.get_closest_marker("corpus_ci")
         else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
