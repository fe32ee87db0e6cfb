"""rankscope: stable-rank generalization studies of convolutional networks, and MSR-DARTS.

Nothing is imported eagerly: import the submodules you need, e.g. ``rankscope.spectra``.
"""

__version__ = "0.1.0"
