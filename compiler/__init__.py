"""edgefleet compiler: turn a trained model into a verified, Edge-TPU-ready bundle directory.

Stages (one module each): :mod:`convert` (float + full-int8 TFLite + ONNX twin, in a child
process), :mod:`graph` (read a .tflite), :mod:`precheck` (Edge TPU mapping prediction),
:mod:`edgetpu` (the real compiler, when present), :mod:`evaluate` (metrics and the accuracy
gate), :mod:`baseline` (drift baseline), :mod:`selftest` (self-test vectors), :mod:`report`
(eval report and model card), :mod:`bundle` (the one place that writes a bundle directory).
:mod:`pipeline` runs them in order; :mod:`__main__` is the thin CLI.
"""
