"""Planning from a dataset: :mod:`.fingerprint` (what the cases are: shapes, spacings,
foreground, intensities, labels, lesion sizes), :mod:`.proposal` (the cache recipe and model
settings they suggest: target spacing with nnU-Net's anisotropy rule, size, z range,
normalisation, 2D vs 3D with its memory). Needs scipy (``medgen-data[layouts]``)."""
