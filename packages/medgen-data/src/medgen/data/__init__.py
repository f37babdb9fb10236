"""medgen.data: reading medical volumes and turning them into diffusion training data."""

from medgen.data.cache import build_or_load, config_hash, load_cache, write_cache
from medgen.data.cache_shards import (
    ShardSource,
    build_sharded_cache,
    load_sharded_pairs,
    load_sharded_slices,
    verify_sharded_cache,
    volume_key,
)
from medgen.data.cache_sources import pair_source, slice_source
from medgen.data.collate import PairDataset, collate_padded, pad_stack
from medgen.data.dicom import SeriesInfo, list_series, read_dicom, series_key
from medgen.data.errors import CacheError, DataError
from medgen.data.intensity import WINDOW_PRESETS, percentile_scale, window, zscore
from medgen.data.mask_codec import decode_mask, encode_mask
from medgen.data.nifti import read_nifti, write_nifti
from medgen.data.orientation import orientation_code, to_canonical
from medgen.data.read import read_volume
from medgen.data.resample import resample
from medgen.data.samplers import (
    ClassBalancedSampler,
    GroupedBatchSampler,
    oversampled_indices,
    oversampled_share,
)
from medgen.data.slices import SliceSet, axial_slices
from medgen.data.templates import mni152_path
from medgen.data.thick_slices import simulate_thick, thick_mask
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
    "ClassBalancedSampler",
    "DataError",
    "GroupedBatchSampler",
    "PairDataset",
    "SeriesInfo",
    "ShardSource",
    "SliceSet",
    "Volume",
    "axial_slices",
    "build_or_load",
    "build_sharded_cache",
    "class_token",
    "collate_padded",
    "config_hash",
    "decode_mask",
    "encode_mask",
    "list_series",
    "load_cache",
    "load_sharded_pairs",
    "load_sharded_slices",
    "mni152_path",
    "normalize_z_local",
    "orientation_code",
    "oversampled_indices",
    "oversampled_share",
    "pad_stack",
    "pair_source",
    "percentile_scale",
    "quantize_z",
    "read_dicom",
    "read_nifti",
    "read_volume",
    "resample",
    "series_key",
    "simulate_thick",
    "slice_source",
    "thick_mask",
    "to_canonical",
    "verify_sharded_cache",
    "volume_key",
    "window",
    "write_cache",
    "write_nifti",
    "z_bin_bounds",
    "z_bin_to_index",
    "zscore",
]
