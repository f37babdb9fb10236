"""Datasets kept the way researchers already keep them, read as cache sources without a CSV.

:mod:`.source` (``LayoutSource``: the recipe's ``sources: {layout, root}``), :mod:`.detect`
(which layout a folder is), :mod:`.nnunet` (nnU-Net v2 raw), :mod:`.decathlon` (Medical
Segmentation Decathlon), :mod:`.bids` (BIDS through pybids), :mod:`.headers` (image geometry
from file headers, label values), :mod:`.problems` (every problem collected, then one
:class:`~medgen.data.errors.DatasetError`), :mod:`.read` (``read_layout``: a folder ->
:class:`~medgen.data.cache.sources.Subject` records + what the layout says about them).

This package imports nothing at import time, so the recipe can import :mod:`.source` alone.
"""
