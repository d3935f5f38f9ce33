"""The serving side: HTTP app, batcher, ONNX Runtime session, metrics and the prediction log.

Nothing in this package imports torch or Lightning: a served model is an ONNX graph plus
its JSON manifest, so the serving install and container stay small and start fast.
"""
