"""ONNX export of a trained task model, with the parity check that gates a model package."""
