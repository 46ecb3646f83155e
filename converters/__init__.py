"""Converters: PyTorch checkpoint -> ONNX, precision variants (FP16, INT8 Q/DQ), TensorRT engines."""
