"""The ``degrade`` step: Real-ESRGAN second-order degradation of HR sources into LQ/HQ pairs."""
