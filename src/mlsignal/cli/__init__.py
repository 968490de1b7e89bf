"""The ``mlsignal`` command line. Commands import their heavy modules lazily."""
