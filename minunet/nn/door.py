"""The door the network runs on by default: "fast" (minunet/fast: chunked, threaded, fused ops
on the backend's twins) or "plain" (minunet/ops: the lesson's whole-array ops).

ModelConfig.ops (minunet/nn/model.py) and TrainConfig.ops (minunet/training/config.py) take
their default from here. The coursework's student copy has no fast ops, so it selects its own
version of this one file (minunet/coursework/make.py, STUDENT_DOOR) instead of editing others.
"""

DEFAULT_OPS = "fast"
