"""The ``bootstrap_teacher`` step: train (embedded default) or import the one-step teacher."""
