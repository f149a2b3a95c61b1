"""ONNX export: a trained model written as an ONNX graph (lowering.py) and proved against
onnxruntime on the spec's own rows (onnx_file.py)."""
