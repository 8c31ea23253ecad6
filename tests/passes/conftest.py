import textwrap

import pytest

from mixprec.ir import dump, parse
from mixprec.passes import build_pipeline


def run_text(text: str, spec: str, **options) -> str:
    """Parse ``text``, run the pipeline ``spec`` and return the dump."""
    graph = parse(textwrap.dedent(text))
    build_pipeline(spec, **options).run(graph)
    return dump(graph)


@pytest.fixture
def run():
    return run_text


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")
