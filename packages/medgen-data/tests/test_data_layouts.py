"""nnU-Net v2, Decathlon and BIDS folders as cache sources: built from the MNI152 demo cases
(two channels, planted lesions), read, checked (every problem listed), cached."""

import json
import shutil

import numpy as np
import pytest

from medgen.data import (
    CacheRecipe,
    DataError,
    DatasetError,
    LayoutSource,
    Volume,
    build_cache,
    detect_layout,
    read_layout,
    read_manifest,
    read_volume,
    write_layout_dataset,
    write_nifti,
)

SPACING = 8.0  # mm: small cases, fast tests


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("nnunet", "decathlon"):
        write_layout_dataset(root / layout, layout, 4, spacing_mm=SPACING)
    return root


@pytest.fixture
def copy(datasets, tmp_path):
    def make(layout):
        shutil.copytree(datasets / layout, tmp_path / layout)
        return tmp_path / layout

    return make


def test_detect_layout(datasets, tmp_path):
    assert detect_layout(datasets / "nnunet") == "nnunet"
    assert detect_layout(datasets / "decathlon") == "decathlon"
    (tmp_path / "dataset_description.json").write_text("{}")
    assert detect_layout(tmp_path) == "bids"
    with pytest.raises(DataError, match="no dataset.json .* nor dataset_description.json"):
        detect_layout(tmp_path / "nope" if (tmp_path / "nope").mkdir() is None else tmp_path)


def test_nnunet_cases_channels_labels_and_splits_final(copy):
    root = copy("nnunet")
    folds = [{"train": ["brain_001", "brain_002", "brain_003"], "val": ["brain_004"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    d = read_layout(LayoutSource(root=str(root)))
    assert d.layout == "nnunet" and d.channels == ("T1", "T2")
    assert d.labels == {"background": (0,), "lesion": (1,)} and d.label_values == (0, 1)
    assert [s.id for s in d.subjects] == ["brain_001", "brain_002", "brain_003", "brain_004"]
    s = d.subjects[0]
    assert s.images == {"T1": root / "imagesTr/brain_001_0000.nii.gz",
                        "T2": root / "imagesTr/brain_001_0001.nii.gz"}  # fmt: skip
    assert s.mask == root / "labelsTr/brain_001.nii.gz"
    assert [x.split for x in d.subjects] == ["train", "train", "train", "val"]
    # a region-based label list counts each of its values
    desc = json.loads((root / "dataset.json").read_text())
    desc["labels"] = {"background": 0, "lesion": 1, "whole": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(desc))
    assert read_layout({"layout": "nnunet", "root": str(root)}).label_values == (0, 1, 2)


def test_nnunet_every_problem_listed_with_its_file(copy):
    root = copy("nnunet")
    tr, lab = root / "imagesTr", root / "labelsTr"
    (tr / "brain_002_0001.nii.gz").unlink()  # missing channel
    shutil.copy(lab / "brain_001.nii.gz", lab / "brain_009.nii.gz")  # extra case
    (tr / "brain_003_0000.nii.gz").rename(tr / "brain_003_0000.nii")  # wrong file_ending
    bad = read_volume(lab / "brain_004.nii.gz")  # the control case: add a voxel of label 3
    values = bad.array.copy()
    values[0, 0, 0] = 3
    write_nifti(Volume(values, bad.spacing, bad.origin, bad.direction), lab / "brain_004.nii.gz")
    t2 = read_volume(tr / "brain_001_0001.nii.gz")  # one channel on another grid
    write_nifti(
        Volume(t2.array[:-1], t2.spacing, t2.origin, t2.direction), tr / "brain_001_0001.nii.gz"
    )
    with pytest.raises(DatasetError) as info:
        read_layout(LayoutSource(layout="nnunet", root=str(root)))
    err = info.value
    lines = str(err).splitlines()
    assert lines[0] == f"{len(err.problems)} problems in {root}/dataset.json (nnU-Net v2 layout)"
    text = "\n".join(err.problems)
    for expected in (
        f"{tr}/brain_002_0001.nii.gz: missing: channel 1 ('T2') of case 'brain_002'",
        f"{lab}/brain_009.nii.gz: extra case 'brain_009': no image in imagesTr",
        f"{tr}/brain_003_0000.nii: does not end in file_ending '.nii.gz'",
        f"{lab}/brain_004.nii.gz: label value 3 not in the labels [0, 1]",
        f"{tr}/brain_001_0001.nii.gz: channel 1 of case 'brain_001' is not on the grid of channel 0",
        f"{root}/dataset.json: numTraining is 4, imagesTr/labelsTr hold 5 cases",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"
    assert len(err.problems) == len(lines) - 1 >= 6


def test_nnunet_missing_keys_and_channel_ids(copy):
    root = copy("nnunet")
    shutil.copy(root / "imagesTr/brain_001_0000.nii.gz", root / "imagesTr/brain_001_0002.nii.gz")
    with pytest.raises(DatasetError, match="channel 2 is not in channel_names"):
        read_layout(LayoutSource(root=str(root)))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    with pytest.raises(DataError, match="nnunet"):  # no channel_names: not detected as nnU-Net
        read_layout(LayoutSource(layout="nnunet", root=str(root)))


def test_decathlon_4d_images_become_channels(datasets):
    d = read_layout(LayoutSource(root=str(datasets / "decathlon")))
    assert d.layout == "decathlon" and d.channels == ("T1", "T2")
    s = d.subjects[0]
    assert s.images["T1"] == s.images["T2"] and s.volumes == {"T1": 0, "T2": 1}
    t1 = read_volume(s.images["T1"], volume_index=0).array
    t2 = read_volume(s.images["T2"], volume_index=1).array
    assert t1.shape == read_volume(s.mask).shape and not np.array_equal(t1, t2)


def test_decathlon_every_problem_listed(copy):
    root = copy("decathlon")
    (root / "labelsTr/BRAIN_002.nii.gz").unlink()
    shutil.copy(root / "imagesTr/BRAIN_001.nii.gz", root / "imagesTr/BRAIN_077.nii.gz")
    one = read_volume(root / "imagesTr/BRAIN_003.nii.gz", volume_index=0)
    write_nifti(one, root / "imagesTr/BRAIN_003.nii.gz")  # 3D, but two modalities declared
    with pytest.raises(DatasetError) as info:
        read_layout(LayoutSource(root=str(root)))
    text = str(info.value)
    assert text.startswith(f"3 problems in {root}/dataset.json (Decathlon layout)")
    assert "labelsTr/BRAIN_002.nii.gz: missing: the label of training[1]" in text
    assert f"{root}/imagesTr/BRAIN_077.nii.gz: extra case: not listed under training" in text
    assert "BRAIN_003.nii.gz: 1 volume(s); modality in dataset.json lists 2 (T1, T2)" in text


def test_recipe_with_a_layout_source_builds_the_cache(copy, tmp_path):
    root = copy("nnunet")
    folds = [{"train": ["brain_001", "brain_002", "brain_004"], "val": ["brain_003"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    recipe = CacheRecipe(
        out=str(tmp_path / "cache"), kind="slices", sources={"layout": "auto", "root": str(root)},
        orientation="RAS", spacing=(8.0, 8.0, 8.0), z_from="foreground", n_bins=2, size=16,
        class_from="mask",
    ).check()  # fmt: skip
    assert isinstance(recipe.sources, LayoutSource)
    report = build_cache(recipe, quiet=True)
    m = read_manifest(tmp_path / "cache")
    assert m["modalities"] == ["T1", "T2"] and m["has_mask"] and len(report.built) == 4
    assert len(m["splits"]["train"]["subjects"]) == 3 and len(m["splits"]["val"]["subjects"]) == 1
    with pytest.raises(DataError, match="sources.layout: expected one of"):
        CacheRecipe(out="x", sources={"layout": "nnUNet", "root": "r"}).check()
    with pytest.raises(DataError, match="sources.root: the dataset folder is required"):
        CacheRecipe(out="x", sources=LayoutSource()).check()


def test_bids_sessions_share_a_split_and_missing_suffix_is_listed(tmp_path):
    pytest.importorskip("bids", reason="BIDS layouts need pybids (medgen-data[layouts])")
    root = write_layout_dataset(tmp_path / "bids", "bids", 4, spacing_mm=SPACING)
    d = read_layout(LayoutSource(root=str(root)))
    assert d.layout == "bids" and d.channels == ("T1w", "T2w")
    ids = [s.id for s in d.subjects]
    assert ids == ["sub-01", "sub-02", "sub-03_ses-1", "sub-03_ses-2"]
    assert [s.group for s in d.subjects] == ["sub-01", "sub-02", "sub-03", "sub-03"]
    assert all(s.mask is not None and "desc-lesion_mask" in s.mask.name for s in d.subjects)
    recipe = CacheRecipe(
        out=str(tmp_path / "cache"), kind="slices", sources={"layout": "bids", "root": str(root)},
        orientation="RAS", spacing=(8.0, 8.0, 8.0), z_from="foreground", n_bins=2, size=16,
        class_from="mask", val_fraction=0.3, split_seed=1,
    )  # fmt: skip
    build_cache(recipe, quiet=True)
    m = read_manifest(tmp_path / "cache")
    split_of = {e["subject"]: e["split"] for e in m["shards"]}
    ses = [s.pseudonym for s in d.subjects[2:]]
    assert split_of[ses[0]] == split_of[ses[1]]  # one subject's sessions never straddle
    with pytest.raises(DatasetError) as info:
        read_layout(LayoutSource(root=str(root), suffixes=("FLAIR",)))
    assert str(info.value).splitlines()[1] == (
        f"  {root}: no anat image with suffix FLAIR (suffixes found: T1w, T2w)"
    )
    (root / "sub-02/anat/sub-02_T2w.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"sub-02/anat: no T2w image \(suffixes here: T1w\)"):
        read_layout(LayoutSource(root=str(root)))
