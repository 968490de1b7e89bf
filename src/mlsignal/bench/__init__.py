"""``mlsignal bench``: measure every inference path on this machine (never in the tests)."""
