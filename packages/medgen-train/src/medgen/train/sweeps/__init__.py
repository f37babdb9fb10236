"""Sweeps: several fit -> sample -> evaluate runs of one config, differing by overrides, and
one table of their results: :mod:`.spec` reads the sweep file, :mod:`.run` runs it (it calls
the fit / sample / evaluate commands, so import it as ``medgen.train.sweeps.run``),
:mod:`.table` writes the table."""
