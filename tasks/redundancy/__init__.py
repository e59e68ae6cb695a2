"""The analyse_redundancy step: per-block redundancy scores of the teacher on a calibration subset."""
