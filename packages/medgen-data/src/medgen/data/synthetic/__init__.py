"""Synthetic inputs for tests, examples and benchmarks: DICOM series of known geometry
(:mod:`.dicom`) and the multi-subject demo data set built from MNI152 (:mod:`.phantoms`)."""
