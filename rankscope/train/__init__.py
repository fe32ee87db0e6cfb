"""``rankscope train``: evaluation networks from a genotype, on one device or many (torchrun).

Import the pieces from their modules (``rankscope.train.config``, ``.runner``, ``.distributed``);
this package file imports nothing heavy.
"""
