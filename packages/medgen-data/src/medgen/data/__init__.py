"""medgen.data: reading medical volumes and turning them into diffusion training data."""

from medgen.data.cache import build_or_load, config_hash, load_cache, write_cache
from medgen.data.dicom import SeriesInfo, list_series, read_dicom, series_key
from medgen.data.errors import CacheError, DataError
from medgen.data.intensity import WINDOW_PRESETS, percentile_scale, window
from medgen.data.nifti import read_nifti
from medgen.data.slices import SliceSet, axial_slices
from medgen.data.templates import mni152_path
from medgen.data.volume import Volume
from medgen.data.zbin import (
    class_token,
    normalize_z_local,
    quantize_z,
    z_bin_bounds,
    z_bin_to_index,
)

__version__ = "0.1.0"

__all__ = [
    "WINDOW_PRESETS",
    "CacheError",
    "DataError",
    "SeriesInfo",
    "SliceSet",
    "Volume",
    "axial_slices",
    "build_or_load",
    "class_token",
    "config_hash",
    "list_series",
    "load_cache",
    "mni152_path",
    "normalize_z_local",
    "percentile_scale",
    "quantize_z",
    "read_dicom",
    "read_nifti",
    "series_key",
    "window",
    "write_cache",
    "z_bin_bounds",
    "z_bin_to_index",
]
