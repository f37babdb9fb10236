"""``LayoutSource``: a recipe's ``sources`` given as a dataset folder in a known layout.

```yaml
sources: {layout: nnunet, root: /data/nnUNet_raw/Dataset001_Brain}
```

``layout`` is ``nnunet``, ``decathlon``, ``bids`` or ``auto`` (detected from the folder);
``fold`` picks the fold of nnU-Net's ``splits_final.json`` (its ``val`` cases become the val
split, the rest train); ``suffixes`` the BIDS ``anat`` suffixes to use as channels (empty:
every suffix found); ``mask_suffix`` the suffix of the BIDS derivatives masks.
"""

from __future__ import annotations

from dataclasses import dataclass

from medgen.data.errors import DataError

LAYOUTS = ("auto", "nnunet", "decathlon", "bids")


@dataclass(frozen=True)
class LayoutSource:
    """A dataset folder in a known layout (see the module docstring)."""

    layout: str = "auto"
    root: str = ""
    fold: int = 0
    suffixes: tuple[str, ...] = ()
    mask_suffix: str = "mask"

    def __post_init__(self) -> None:
        if isinstance(self.suffixes, list):
            object.__setattr__(self, "suffixes", tuple(self.suffixes))

    def check(self, key: str = "sources") -> LayoutSource:
        """Raise a DataError naming ``key.FIELD`` for the first bad field; return ``self``."""
        if self.layout not in LAYOUTS:
            shown = ", ".join(LAYOUTS)
            raise DataError(f"{key}.layout: expected one of {shown}, got {self.layout!r}")
        if not isinstance(self.root, str) or not self.root:
            raise DataError(f"{key}.root: the dataset folder is required")
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 0:
            raise DataError(f"{key}.fold: expected an integer >= 0, got {self.fold!r}")
        if not all(isinstance(s, str) and s for s in self.suffixes):
            raise DataError(f"{key}.suffixes: expected BIDS suffixes (T1w, FLAIR, ...)")
        if not isinstance(self.mask_suffix, str) or not self.mask_suffix:
            raise DataError(f"{key}.mask_suffix: expected a BIDS suffix (mask, dseg, ...)")
        return self
