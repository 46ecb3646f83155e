"""Runtime: preprocessing, image sources and runners (ONNX Runtime, PyTorch, TensorRT).

Nothing here imports torch or TensorRT at import time; each backend loads its library when a
runner for it is opened.
"""
