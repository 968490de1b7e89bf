"""Labels, purged walk-forward splits, fitting, calibration, evaluation, bundle writing."""
