"""edgefleet cloud fallback: a FastAPI + onnxruntime service that serves the ONNX twins of
verified bundles, with the seed's ``POST /predict`` contract, a typed tensor API and dynamic
micro-batching. Imports only :mod:`protocol` from the rest of edgefleet.
"""
