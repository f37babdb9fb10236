"""medgen.data: reading medical volumes and turning them into diffusion training data.

Layers: readers (:mod:`.read`, :mod:`.nifti`, :mod:`.dicom`), geometry and intensity
(:mod:`.orientation`, :mod:`.resample`, :mod:`.intensity`), training items (:mod:`.slicing`),
sharded caches with a subject-level split (:mod:`.cache`), DataLoader pieces
(:mod:`.loading`), and synthetic inputs (:mod:`.synthetic`).
"""

from medgen.data.cache.atomic import config_hash
from medgen.data.cache.build import BuildReport, build_cache, prepare_cache_directory
from medgen.data.cache.dataset import CacheDataset
from medgen.data.cache.pair_volumes import PairVolumes
from medgen.data.cache.recipe import CacheRecipe
from medgen.data.cache.shards import open_shard, read_manifest, verify_cache
from medgen.data.cache.sources import Subject, resolve_sources
from medgen.data.dicom import SeriesInfo, list_series, read_dicom, series_key
from medgen.data.errors import CacheError, CacheWarning, DataError, DatasetError
from medgen.data.intensity import WINDOW_PRESETS, percentile_scale, window, zscore
from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.layouts.detect import detect_layout
from medgen.data.layouts.read import read_layout
from medgen.data.layouts.source import LayoutSource
from medgen.data.loading.collate import PairDataset, collate_padded, pad_stack
from medgen.data.loading.samplers import (
    ClassBalancedSampler,
    GroupedBatchSampler,
    ResumableBatchSampler,
    oversampled_indices,
    oversampled_share,
)
from medgen.data.nifti import read_nifti, write_nifti
from medgen.data.orientation import canonical_direction, orientation_code, to_canonical
from medgen.data.read import read_volume
from medgen.data.resample import resample
from medgen.data.slicing.codec import decode_mask, encode_mask
from medgen.data.slicing.slices import SliceSet, axial_slices
from medgen.data.slicing.thick import simulate_thick, thick_mask
from medgen.data.slicing.thin_grid import (
    INTERPOLATIONS,
    centres_to_thin,
    interpolation_weights,
    positions_from_centres,
    thick_positions,
    thick_to_thin,
)
from medgen.data.slicing.zbin import (
    class_token,
    normalize_z_local,
    quantize_z,
    z_bin_bounds,
    z_bin_to_index,
)
from medgen.data.synthetic.layouts import write_layout_dataset
from medgen.data.synthetic.phantoms import write_demo_dataset
from medgen.data.templates import mni152_path
from medgen.data.volume import Volume, pseudonym

__version__ = "0.2.0"

__all__ = [
    "INTERPOLATIONS",
    "WINDOW_PRESETS",
    "BuildReport",
    "CacheDataset",
    "CacheError",
    "CacheRecipe",
    "CacheWarning",
    "ClassBalancedSampler",
    "DataError",
    "DatasetError",
    "GroupedBatchSampler",
    "LayoutDataset",
    "LayoutSource",
    "PairDataset",
    "PairVolumes",
    "ResumableBatchSampler",
    "SeriesInfo",
    "SliceSet",
    "Subject",
    "Volume",
    "axial_slices",
    "build_cache",
    "canonical_direction",
    "centres_to_thin",
    "class_token",
    "collate_padded",
    "config_hash",
    "decode_mask",
    "detect_layout",
    "encode_mask",
    "interpolation_weights",
    "list_series",
    "mni152_path",
    "normalize_z_local",
    "open_shard",
    "orientation_code",
    "oversampled_indices",
    "oversampled_share",
    "pad_stack",
    "percentile_scale",
    "positions_from_centres",
    "prepare_cache_directory",
    "pseudonym",
    "quantize_z",
    "read_dicom",
    "read_layout",
    "read_manifest",
    "read_nifti",
    "read_volume",
    "resample",
    "resolve_sources",
    "series_key",
    "simulate_thick",
    "thick_mask",
    "thick_positions",
    "thick_to_thin",
    "to_canonical",
    "verify_cache",
    "window",
    "write_demo_dataset",
    "write_layout_dataset",
    "write_nifti",
    "z_bin_bounds",
    "z_bin_to_index",
    "zscore",
]
