"""fmabs-edge: visual anomaly detection with FMABS, from training to TensorRT engines on the edge.

Importing the package loads neither torch nor TensorRT: the deploy path (``run``/``eval`` on ONNX
files and engines) works with numpy, OpenCV and ONNX Runtime alone.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
