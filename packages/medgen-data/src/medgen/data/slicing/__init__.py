"""Volumes -> training items: local z-binning (:mod:`.zbin`), axial slices (:mod:`.slices`),
simulated thick slices (:mod:`.thick`) and the lossless mask codec (:mod:`.codec`)."""
