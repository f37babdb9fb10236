"""Feeding a DataLoader: samplers (:mod:`.samplers`, including the resumable, DDP-aware
:class:`~medgen.data.loading.samplers.ResumableBatchSampler`) and padding collate functions
(:mod:`.collate`)."""
