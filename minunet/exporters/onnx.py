"""A network as an ONNX graph, node by node from its traced forward (minunet/nn/trace.py), with
onnx.helper and no PyTorch. Nothing here knows the U-Net: each op of the trace becomes its ONNX
node(s) (`NODES`), so every architecture of the registry exports the same way.

The graph's contract (docs/DESIGN.md; python -m minunet.export):

    input   "input"  float32 (N, C, H, W), the image in [0, 1] as minunet's training saw it;
            H and W any valid sizes of the network (dynamic batch, height and width)
    output  "output" float32 (N, K, H - margin, W - margin), class probabilities (softmax over
            K; output="logits" leaves the softmax out)

The standardisation (x - 0.5) / 0.25 (minunet.nn.model.standardize) is inside the graph (its
first two nodes, Sub and Mul). A centre crop "to the size of another value" (the U-Net's skips)
computes its offsets in the graph from that value's runtime shape: (S - s) // 2 above and
left, so the graph takes every valid size, not only the traced one.
"""

from __future__ import annotations

import numpy as np

from minunet.nn import trace as tracing
from minunet.nn.model import INPUT_MEAN, INPUT_STD

OPSET = 17  # ONNX operator set: Softmax over one axis (13+), Shape with start (15+)
IR_VERSION = 8  # the IR of opset 17, read by runtimes back to onnxruntime 1.11


def onnx_model(model, params: dict | None = None, output: str = "probabilities",
               metadata: dict | None = None, doc: str = ""):
    """The network of `model` (its class and config; parameters from `params` or the model's
    own, as float32 under their names) as an onnx.ModelProto."""
    from onnx import TensorProto, helper, numpy_helper

    config = model.config
    geometry = model.geometry
    params = params if params is not None else {
        k: np.ascontiguousarray(v, np.float32) for k, v in model.state_dict().items()}
    size = geometry.nearest_valid_sizes(geometry.min_tile())[1]
    t = tracing.trace(type(model), config, size)
    nodes, inits, done = [], [], set()

    def const(name, value):
        if name not in done:
            inits.append(numpy_helper.from_array(np.asarray(value), name))
            done.add(name)
        return name

    def op(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def param(name):
        return const(name, np.asarray(params[name], np.float32))

    names = {"input": None}  # value name in the trace -> its name in the graph
    h = op("Sub", ["input", const("input_mean", np.float32(INPUT_MEAN))], "standardize.sub")
    names["input"] = op("Mul", [h, const("input_scale", np.float32(1.0 / INPUT_STD))],
                        "standardize")
    for n in t.nodes:
        ins = [names[i] if i in names else param(i) for i in n.inputs if i is not None]
        label = n.params[0].rsplit(".", 1)[0] if n.params else f"{n.op}_{n.out}"
        build = NODES.get(n.op)
        if build is None:
            raise NotImplementedError(f"no ONNX node for the op {n.op!r} yet: add one to "
                                      f"minunet/exporters/onnx.py (NODES)")
        names[n.out] = build(op, const, ins, n, label, names)
    last = names[t.output]
    if output == "probabilities":
        last = op("Softmax", [last], "softmax", axis=1)
    elif output != "logits":
        raise ValueError(f"output must be 'probabilities' or 'logits', got {output!r}")
    nodes[-1].output[0] = "output"  # the last node writes the graph's output

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, f"minunet_{config.arch}",
        [helper.make_tensor_value_info("input", f32, ["batch", config.in_channels, "height",
                                                      "width"])],
        [helper.make_tensor_value_info("output", f32, ["batch", config.n_classes, "out_height",
                                                       "out_width"])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="minunet",
                              doc_string=doc or _doc(model, output))
    helper.set_model_props(proto, {k: str(v) for k, v in (metadata or {}).items()})
    return proto


def _doc(model, output: str) -> str:
    c, g = model.config, model.geometry
    what = "class probabilities (softmax)" if output == "probabilities" else "logits"
    return (f"{c.arch} exported by minunet. input: float32 (N, {c.in_channels}, H, W), images "
            f"in [0, 1], standardised inside the graph as (x - {INPUT_MEAN}) / {INPUT_STD}; "
            f"H, W = {g.rule()}. output: float32 (N, {c.n_classes}, H - {g.margin}, W - "
            f"{g.margin}), {what}.")


# --- one builder per op: (op, const, graph inputs, trace node, label, names) -> output name --


def _conv(op, const, ins, n, label, names):
    h = op("Conv", ins, label, kernel_shape=[n.attrs["kernel"]] * 2)  # no pads: valid
    return op("Relu", [h], f"{label}.relu") if n.attrs["relu"] else h


def _conv_general(op, const, ins, n, label, names):
    (ph, pw), (kh, kw) = n.attrs["padding"], n.attrs["kernel"]
    return op("Conv", ins, label, kernel_shape=[kh, kw], strides=list(n.attrs["stride"]),
              pads=[ph, pw, ph, pw], group=n.attrs["groups"])


def _upconv(op, const, ins, n, label, names):
    return op("ConvTranspose", ins, label, kernel_shape=[2, 2], strides=[2, 2])


def _crop(op, const, ins, n, label, names):
    like = n.attrs.get("like")
    big = op("Shape", [ins[0]], f"{label}.big_hw", start=2)  # [S_h, S_w] int64
    if like:  # the size of another value, read at run time
        small = op("Shape", [names[like]], f"{label}.small_hw", start=2)
    else:
        small = const(f"{label}.small_hw", np.array(n.attrs["size"], np.int64))
    two = const("two", np.array(2, np.int64))
    top = op("Div", [op("Sub", [big, small], f"{label}.margin"), two], f"{label}.top")
    end = op("Add", [top, small], f"{label}.end")
    return op("Slice", [ins[0], top, end, const("axes_hw", np.array([2, 3]))], label)


def _simple(kind, **attrs):
    def build(op, const, ins, n, label, names):
        return op(kind, ins, label, **attrs)
    return build


def _maxpool(op, const, ins, n, label, names):
    k = n.attrs["k"]
    return op("MaxPool", ins, label, kernel_shape=[k, k], strides=[k, k],
              ceil_mode=int(n.attrs["ceil_mode"]))


def _relu6(op, const, ins, n, label, names):
    return op("Clip", [ins[0], const("zero_f", np.float32(0)), const("six_f", np.float32(6))],
              label)


def _silu(op, const, ins, n, label, names):
    return op("Mul", [ins[0], op("Sigmoid", ins, f"{label}.sigmoid")], label)


def _batchnorm(op, const, ins, n, label, names):
    # inputs x, gamma, beta, running mean, running var: the eval-mode affine map (an export
    # is for inference)
    return op("BatchNormalization", ins[:5], label, epsilon=float(n.attrs.get("eps", 1e-5)))


def _resize(op, const, ins, n, label, names, factor, **attrs):
    scales = const(f"scales_{factor}", np.array([1, 1, factor, factor], np.float32))
    return op("Resize", [ins[0], "", scales], label, **attrs)


def _nearest(op, const, ins, n, label, names):
    # PyTorch's nearest: source pixel floor(o / 2)
    return _resize(op, const, ins, n, label, names, 2, mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _bilinear(op, const, ins, n, label, names):
    corners = "align_corners" if n.attrs["align_corners"] else "half_pixel"
    return _resize(op, const, ins, n, label, names, n.attrs["factor"], mode="linear",
                   coordinate_transformation_mode=corners)


def _channel_scale(op, const, ins, n, label, names):
    gate = ins[1] if n.attrs.get("gate_ndim", 2) == 4 else op(  # (N, C) -> (N, C, 1, 1)
        "Unsqueeze", [ins[1], const("axes_hw", np.array([2, 3]))], f"{label}.gate")
    return op("Mul", [ins[0], gate], label)


def _binary_logits(op, const, ins, n, label, names):
    # [0, z]: a zero channel of z's shape before z (minunet/ops/elementwise.py)
    zeros = op("ConstantOfShape", [op("Shape", ins, f"{label}.shape")], f"{label}.zeros",
               value=_float_tensor(0.0))
    return op("Concat", [zeros, ins[0]], label, axis=1)


def _log_mean_softmax(op, const, ins, n, label, names):
    # log of the heads' mean softmax (minunet/ops/elementwise.py): each head's LogSoftmax,
    # stacked on a new axis 0, ReduceLogSumExp over it, minus log J
    axis0 = const("axis0", np.array([0], np.int64))
    logp = [op("Unsqueeze", [op("LogSoftmax", [a], f"{label}.logp{j}", axis=1), axis0],
               f"{label}.stack{j}") for j, a in enumerate(ins)]
    stacked = op("Concat", logp, f"{label}.stacked", axis=0) if len(logp) > 1 else logp[0]
    lse = op("ReduceLogSumExp", [stacked], f"{label}.lse", axes=[0], keepdims=0)
    return op("Sub", [lse, const(f"log_{len(ins)}", np.float32(np.log(len(ins))))], label)


def _float_tensor(v):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([v], np.float32), "value")


NODES = {
    "conv2d": _conv,
    "conv2d_general": _conv_general,
    "upconv2x2": _upconv,
    "maxpool2x2": _simple("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    "maxpool": _maxpool,
    "global_avgpool": _simple("GlobalAveragePool"),
    "global_maxpool": _simple("GlobalMaxPool"),
    "center_crop": _crop,
    "concat": _simple("Concat", axis=1),
    "add": _simple("Add"),
    "relu": _simple("Relu"),
    "sigmoid": _simple("Sigmoid"),
    "relu6": _relu6,
    "silu": _silu,
    "batchnorm2d": _batchnorm,
    "nearest_upsample2": _nearest,
    "bilinear_upsample": _bilinear,
    "channel_scale": _channel_scale,
    "binary_logits": _binary_logits,
    "log_mean_softmax": _log_mean_softmax,
}


def check_onnx(model) -> None:
    """onnx.checker (with shape inference) on the model; ValueError if it fails."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ValueError(f"the ONNX model fails onnx.checker: {e}") from e


def run_onnx(model, x: np.ndarray) -> np.ndarray:
    """The ONNX model's output for x (N, C, H, W) float32, by onnxruntime on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": np.ascontiguousarray(x, np.float32)})[0]


def save_onnx(model, path):
    from minunet.files import atomic_write

    data = model.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))
