"""Sharded training caches: scans + masks -> one verified shard per subject -> a manifest with a
subject-level split -> :class:`~medgen.data.cache.dataset.CacheDataset` over memory-mapped
shards.

:mod:`.recipe` (what to build, checked), :mod:`.sources` (source tables -> subjects),
:mod:`.thick_series` (a real thick series in the thin frame), :mod:`.arrays` (a subject -> shard
arrays), :mod:`.split` (subject-level split),
:mod:`.shards` (shard files, sidecars, manifest, memory-mapped reading), :mod:`.build`
(``build_cache``), :mod:`.dataset` (``CacheDataset``), :mod:`.atomic` (atomic writes, hashes).
"""
