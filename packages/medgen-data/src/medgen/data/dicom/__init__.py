"""DICOM input: a directory, DICOMDIR, ZIP archive or single file -> :class:`~medgen.data.Volume`.

:mod:`.reader` groups and reads series, :mod:`.sources` opens files and ZIP members,
:mod:`.geometry` checks and measures slice stacks, :mod:`.pixels` decodes and rescales,
:mod:`.multiframe` reads Enhanced multi-frame files, :mod:`.regrid` fixes irregular spacing.
"""

from medgen.data.dicom.reader import SeriesInfo, SeriesList, list_series, read_dicom, series_key

__all__ = ["SeriesInfo", "SeriesList", "list_series", "read_dicom", "series_key"]
