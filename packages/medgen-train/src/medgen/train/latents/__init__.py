"""Latent diffusion's data side: frozen autoencoder runs, latent caches, the latent space.

:mod:`.autoencoder` (an autoencoder run, frozen, identified by its weights' sha256; chunked
decoding), :mod:`.cache` (``encode_cache``: pixel cache -> latent cache), :mod:`.dataset`
(``LatentDataset`` over a latent cache), :mod:`.scale` (the training split's scale factor),
:mod:`.space` (the diffusion task's ``task.space.kind: latent``).
"""
