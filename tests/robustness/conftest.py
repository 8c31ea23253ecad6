"""The full fuzz run (marker ``fuzz``) only runs when asked for: ``pytest -m fuzz``."""
import pytest


def pytest_collection_modifyitems(config, items):
    if "fuzz" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the full fuzz run; select it with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)
