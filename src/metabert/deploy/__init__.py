"""Deployment: ONNX export and ONNX Runtime runners, INT8 quantization, the runners by name,
streaming file prediction and the HTTP server."""
