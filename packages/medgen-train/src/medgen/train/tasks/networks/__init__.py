"""The ``model:`` section: which network, chosen by ``model.kind``, and how it is built.

The data and the task fix what a network must accept (spatial dims, input and output
channels, tokens, modes, prior channels: a :class:`NetworkSpec`); the section says the rest
(widths, depth, attention, patches). ``unet`` is MONAI's ``DiffusionModelUNet`` through
:class:`medgen.models.ConditionedUNet`; ``dit``, ``hdit`` and ``uvit`` are
:class:`medgen.models.DiT`, :class:`~medgen.models.HDiT` and :class:`~medgen.models.UViT`.
Every config checks its own rules in ``validate()`` (before anything is written) and the
sizes of the data in ``build(spec)``, each a one-line ConfigError naming the key.
"""

from medgen.train.tasks.networks.dit import DiTConfig
from medgen.train.tasks.networks.hdit import HDiTConfig
from medgen.train.tasks.networks.spec import NetworkSpec
from medgen.train.tasks.networks.unet import UNetConfig
from medgen.train.tasks.networks.uvit import UViTConfig

NETWORKS = {"unet": UNetConfig, "dit": DiTConfig, "hdit": HDiTConfig, "uvit": UViTConfig}

__all__ = ["NETWORKS", "DiTConfig", "HDiTConfig", "NetworkSpec", "UNetConfig", "UViTConfig"]
