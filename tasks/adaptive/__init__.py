"""The ``train_mmle`` DAG step: AdaDiffSR's gain regressor for a multi-step teacher."""
