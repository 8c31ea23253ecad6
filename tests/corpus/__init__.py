"""The real-model corpus (issue 7 part 5): real architectures and pretrained weights that ship
in pip packages, built offline into a cache directory, each sent through the default
``mixprec convert`` path by ``bench/corpus.py``. ``registry.ENTRIES`` lists them."""
