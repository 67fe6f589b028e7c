#!/usr/bin/python3
"""tests/parity/gen.py — reference cases from PyTorch for Keel's parity tests.

Run with Debian's python3-torch (`/usr/bin/python3 tests/parity/gen.py`); it rewrites, for
each case NAME in the table below:

  NAME.nn                  the Keel script (data NAME.csv, the network, loss, optimizer)
  NAME.csv                 the data (a header, feature columns, a label column)
  NAME.init.safetensors    PyTorch's initial weights, with Keel's names (dense1.weight, ...)
  NAME.want.safetensors    the weights after the script's number of steps in PyTorch
                           (parameters and batchnorm's running statistics)

An image case gives its sample shape (channels, height, width) instead of a feature count and
its hidden layers as Keel layer lines ("conv 4 kernel=3 pad=1 batchnorm relu"), from which the
same network is built of torch.nn modules (IMAGE_LAYERS). The CSV holds each image as one row
of c·h·w numbers in PyTorch's order (channel, row, column): `input CxHxW` makes Keel read the
row as that image, and torch.nn.Unflatten does the same on PyTorch's side.

and, for a case with validation rows:

  NAME_val.csv             the validation data (the script's `val` source)
  NAME.want.json           {"val_loss": ...}: PyTorch's loss on it in eval() mode with the
                           final weights, the mean over batches of the script's batch size
                           weighted by their sizes, as Keel's report.json computes val_loss

`make test` (tests/run.sh, group parity) runs each script with --init NAME.init.safetensors
and --no-shuffle and compares its final.safetensors with NAME.want.safetensors (relative
error at most 1e-4), and report.json's val_loss with NAME.want.json where there is one,
without needing torch. Batches are taken in file order, the last partial batch kept, exactly
as `keel run --no-shuffle` does.
"""

import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


ACT = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}


class GlobalAvgPool(torch.nn.Module):
    """Keel's global_avgpool: mean(mean(x, axis=3), axis=2), [n, c, h, w] → [n, c]."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


# The layers an image case may name, with their parameters in Keel's order and defaults
# (stdlib/images.nn and stdlib/layers.nn), and a factory of the torch.nn module given the
# input shape of one sample and the arguments. Pooling's stride 0 means the window's size;
# pad=same (Keel's -1) is torch's padding="same" (odd kernels, stride 1).
IMAGE_LAYERS = {
    "conv": ({"units": None, "kernel": 3, "stride": 1, "pad": 0, "dilation": 1},
             lambda s, a: torch.nn.Conv2d(s[0], a["units"], a["kernel"], stride=a["stride"],
                                          padding="same" if a["pad"] == "same" else a["pad"],
                                          dilation=a["dilation"])),
    "maxpool": ({"kernel": None, "stride": 0, "pad": 0},
                lambda s, a: torch.nn.MaxPool2d(a["kernel"], a["stride"] or a["kernel"],
                                                a["pad"])),
    "avgpool": ({"kernel": None, "stride": 0, "pad": 0},
                lambda s, a: torch.nn.AvgPool2d(a["kernel"], a["stride"] or a["kernel"],
                                                a["pad"], count_include_pad=True)),
    "global_avgpool": ({}, lambda s, a: GlobalAvgPool()),
    "flatten": ({}, lambda s, a: torch.nn.Flatten()),
    "batchnorm": ({"momentum": 0.1, "eps": 1e-5},
                  lambda s, a: (torch.nn.BatchNorm2d if len(s) == 3 else torch.nn.BatchNorm1d)(
                      s[0], eps=a["eps"], momentum=a["momentum"])),
    "dense": ({"units": None}, lambda s, a: torch.nn.Linear(s[0], a["units"])),
    **{name: ({}, lambda s, a, f=f: f()) for name, f in ACT.items()},
}


def image_layers(shape, lines):
    """The (kind, module) pairs of Keel layer lines, read as Keel binds them: a word naming a
    layer starts the next layer, a plain item binds to its first parameter not yet given,
    name=value to that parameter. Returns them and the output shape of one sample."""
    items = [w for line in lines for w in line.split()]
    out = []
    while items:
        kind = items.pop(0)
        defaults, make = IMAGE_LAYERS[kind]
        args, free = dict(defaults), [k for k, v in defaults.items()]
        while items and items[0] not in IMAGE_LAYERS:
            word = items.pop(0)
            key, _, value = word.rpartition("=")
            key = key or free[0]
            free.remove(key)
            args[key] = value if value == "same" else (float(value) if "." in value or "e" in value
                                                       else int(value))
        assert all(v is not None for v in args.values()), f"{kind}: a parameter lacks a value"
        module = make(shape, args)
        if kind != "batchnorm":  # (a forward pass would move its running statistics)
            with torch.no_grad():
                shape = tuple(module(torch.zeros(1, *shape)).shape[1:])
        out.append((kind, module))
    return out, shape


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023) as its reference implementation writes it: decoupled weight
    decay, the sign of an interpolation of the momentum and the gradient."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                c = m * b1 + p.grad * (1 - b1)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(c), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


# A user-defined optimizer, written in the script itself (docs/language.md shows it).
LION = """optimizer lion(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0) {
  state exp_avg = 0
  c = beta1 * exp_avg + (1 - beta1) * g
  w = w * (1 - lr * weight_decay) - lr * ((c > 0) - (c < 0))
  exp_avg = beta2 * exp_avg + (1 - beta2) * g
}

"""

# name, features, hidden layers [(units, layer, ...)]: a dense layer of that many units, then
# the named layers in order (an activation or "batchnorm"), outputs, loss, optimizer line,
# torch optimizer factory, batch, steps, rows, and optionally the number of validation rows
# (the case then gets NAME_val.csv and NAME.want.json). An image case gives (channels, height,
# width) for features and Keel layer lines for the hidden layers (see image_layers); they must
# end flat (flatten or global_avgpool), before the output layer, dense OUTPUTS.
CASES = [
    ("sgd_momentum_ce", 4, [(8, "relu")], 3, "cross_entropy",
     "sgd lr=0.1 momentum=0.9",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 8, 20, 24),
    ("sgd_nesterov_decay", 4, [(6, "tanh"), (5, "relu")], 3, "cross_entropy",
     "sgd lr=0.05 momentum=0.8 nesterov=1 weight_decay=0.01",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
     8, 20, 30),
    ("sgd_dampening_mse", 3, [(5, "sigmoid")], 1, "mse",
     "sgd lr=0.1 momentum=0.5 dampening=0.3",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3), 6, 20, 20),
    ("sgd_plain_linear", 5, [], 4, "cross_entropy",
     "sgd lr=0.2",
     lambda p: torch.optim.SGD(p, lr=0.2), 10, 20, 25),
    # Adam: plain, coupled L2, amsgrad (beta2 low enough that exp_avg_sq falls below its
    # maximum, so the max matters)
    ("adam_plain_ce", 4, [(8, "relu")], 3, "cross_entropy",
     "adam lr=0.01",
     lambda p: torch.optim.Adam(p, lr=0.01), 8, 20, 24),
    ("adam_decay_mse", 3, [(6, "tanh")], 1, "mse",
     "adam lr=0.02 weight_decay=0.1",
     lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.1), 8, 20, 32),
    ("adam_amsgrad_ce", 5, [(7, "sigmoid")], 3, "cross_entropy",
     "adam lr=0.03 beta1=0.8 beta2=0.9 eps=1e-6 amsgrad=1",
     lambda p: torch.optim.Adam(p, lr=0.03, betas=(0.8, 0.9), eps=1e-6, amsgrad=True),
     8, 20, 24),
    # AdamW: decoupled decay, with and without amsgrad
    ("adamw_decay_ce", 4, [(6, "tanh"), (5, "relu")], 3, "cross_entropy",
     "adamw lr=0.02 weight_decay=0.5",
     lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.5), 8, 20, 24),
    ("adamw_amsgrad_mse", 3, [(5, "relu")], 1, "mse",
     "adamw lr=0.02 beta2=0.9 amsgrad=1",
     lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.9, 0.9), amsgrad=True), 6, 20, 24),
    # RMSprop: plain, momentum + centered, coupled L2
    ("rmsprop_plain_ce", 4, [(8, "relu")], 3, "cross_entropy",
     "rmsprop lr=0.01",
     lambda p: torch.optim.RMSprop(p, lr=0.01), 8, 20, 24),
    ("rmsprop_momentum_centered", 4, [(6, "tanh")], 3, "cross_entropy",
     "rmsprop lr=0.005 alpha=0.9 momentum=0.7 centered=1",
     lambda p: torch.optim.RMSprop(p, lr=0.005, alpha=0.9, momentum=0.7, centered=True),
     8, 20, 24),
    ("rmsprop_decay_mse", 3, [(5, "sigmoid")], 1, "mse",
     "rmsprop lr=0.01 weight_decay=0.2 eps=1e-6",
     lambda p: torch.optim.RMSprop(p, lr=0.01, weight_decay=0.2, eps=1e-6), 8, 20, 32),
    # Adagrad: plain, and lr_decay + initial_accumulator_value + weight_decay
    ("adagrad_plain_ce", 4, [(8, "relu")], 3, "cross_entropy",
     "adagrad lr=0.1",
     lambda p: torch.optim.Adagrad(p, lr=0.1), 8, 20, 24),
    ("adagrad_options_mse", 3, [(6, "tanh")], 1, "mse",
     "adagrad lr=0.2 lr_decay=0.05 initial_accumulator_value=0.3 weight_decay=0.05",
     lambda p: torch.optim.Adagrad(p, lr=0.2, lr_decay=0.05, initial_accumulator_value=0.3,
                                   weight_decay=0.05), 8, 20, 24),
    # Batch normalization: parameters and running statistics after training, and the
    # validation loss in eval() mode (the running statistics at work)
    ("batchnorm_sgd_ce", 5, [(8, "batchnorm", "relu")], 3, "cross_entropy",
     "sgd lr=0.1 momentum=0.9",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 10, 20, 40, 24),
    # 24 features: rows wide enough (16 floats or more) that batchnorm's per-feature statistics,
    # scale and shift join the fused loops over rows (codegen's row operands)
    ("batchnorm_wide_sgd_ce", 6, [(24, "batchnorm", "relu")], 3, "cross_entropy",
     "sgd lr=0.1 momentum=0.9",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 10, 20, 40, 24),
    # A last partial batch (30 rows in batches of 8: 8, 8, 8, 6): the batch size n is a run-time
    # value in batchnorm's statistics, the loss's mean, and the validation loss's weighting
    # (21 validation rows: 8, 8, 5). Batchnorm follows tanh here, not a dense layer directly:
    # the bias of a dense layer right before batchnorm has a gradient of zero up to rounding,
    # which Adam (dividing by its root mean square) would blow up into ±lr steps of random sign.
    ("partial_batchnorm_adam", 4, [(6, "tanh", "batchnorm"), (7, "relu")], 3, "cross_entropy",
     "adam lr=0.02",
     lambda p: torch.optim.Adam(p, lr=0.02), 8, 20, 30, 21),
    # Gradient clipping, as torch.nn.utils.clip_grad_norm_ and clip_grad_value_ between
    # backward() and step(); thresholds low enough that every step is clipped
    ("clip_norm_sgd", 4, [(8, "relu")], 3, "cross_entropy",
     "sgd lr=0.2 momentum=0.9",
     lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), 8, 20, 24, 0, {"clip": ("norm", 0.3)}),
    ("user_optimizer_lion", 4, [(8, "relu")], 3, "cross_entropy",
     "lion lr=0.003 weight_decay=0.1",
     lambda p: Lion(p, lr=0.003, weight_decay=0.1), 8, 20, 24, 0, {"defs": LION}),
    ("clip_value_adam_mse", 3, [(6, "tanh")], 1, "mse",
     "adam lr=0.01",
     lambda p: torch.optim.Adam(p, lr=0.01), 8, 20, 24, 0, {"clip": ("value", 0.02)}),
    # Images [n, c, h, w] (torch.nn.Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d): each CSV row is
    # one image. Convolution with padding and stride 2, then max pooling
    ("conv_stride_pad_sgd", (1, 8, 8), ["conv 4 kernel=3 stride=2 pad=1 relu", "maxpool 2",
                                        "flatten"], 3, "cross_entropy",
     "sgd lr=0.05 momentum=0.9",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 8, 20, 24),
    # dilation 2 on two channels, then average pooling over a zero-padded border (the padding
    # counts in the mean, count_include_pad=True as PyTorch's default)
    ("conv_dilation_avgpool_adam", (2, 9, 9), ["conv 3 kernel=3 dilation=2 tanh",
                                               "avgpool 2 pad=1", "flatten"], 3, "cross_entropy",
     "adam lr=0.01",
     lambda p: torch.optim.Adam(p, lr=0.01), 8, 20, 24),
    # pad=same with a 5×5 kernel, overlapping max pooling with padding, a hidden dense layer
    ("conv_same_maxpool_mse", (1, 7, 7), ["conv 2 kernel=5 pad=same relu",
                                          "maxpool 3 stride=2 pad=1", "flatten", "dense 6 tanh"],
     1, "mse",
     "sgd lr=0.05",
     lambda p: torch.optim.SGD(p, lr=0.05), 8, 20, 24),
    # Batch normalization per channel (BatchNorm2d) in two conv–batchnorm–relu blocks, the
    # second ending in global average pooling: parameters and running statistics after
    # training, and the validation loss in eval() mode
    ("conv_batchnorm_sgd_ce", (3, 10, 10), ["conv 4 kernel=3 pad=same batchnorm relu",
                                            "maxpool 2", "conv 6 kernel=3 batchnorm relu",
                                            "global_avgpool"], 3, "cross_entropy",
     "sgd lr=0.1 momentum=0.9",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 10, 20, 40, 24),
    # The same with Adam and a last partial batch (30 rows in batches of 8; 21 validation rows),
    # a strided second convolution and a flatten into a hidden dense layer. Batchnorm follows
    # relu here: a convolution's bias right before batchnorm has a gradient of zero up to
    # rounding, which Adam would blow up into ±lr steps of random sign (as in
    # partial_batchnorm_adam); conv_batchnorm_sgd_ce covers conv → batchnorm.
    ("conv_batchnorm_adam", (1, 10, 10), ["conv 4 kernel=3 pad=1 relu batchnorm", "maxpool 2",
                                          "conv 8 kernel=3 stride=2 pad=1 relu batchnorm",
                                          "avgpool 2 stride=1", "flatten", "dense 8 relu"],
     3, "cross_entropy",
     "adam lr=0.01",
     lambda p: torch.optim.Adam(p, lr=0.01), 8, 20, 30, 21),
]


def make_case(name, features, hidden, outputs, loss, opt_line, make_opt, batch, steps, rows,
              val=0, options=None):
    clip = (options or {}).get("clip")
    defs = (options or {}).get("defs", "")
    assert loss == "cross_entropy" or outputs == 1, "a CSV holds one target column"
    image = features if isinstance(features, tuple) else None
    if image:
        features = image[0] * image[1] * image[2]
    torch.manual_seed(sum(name.encode()))
    g = torch.Generator().manual_seed(len(name))

    def make_data(count):
        x = torch.randn(count, features, generator=g)
        if loss == "cross_entropy":
            y = torch.randint(0, outputs, (count,), generator=g)
        else:
            y = (x.sum(dim=1, keepdim=True) * 0.5 + 0.1 * torch.randn(count, 1, generator=g))
        return x, y

    x, y = make_data(rows)

    # the layers, named as Keel names them: the kind and a count per kind (dense1, batchnorm1)
    layers, named, width, lines, count = [], [], features, [], {}

    def add(kind, module):
        count[kind] = count.get(kind, 0) + 1
        layers.append(module)
        if kind in ("dense", "batchnorm", "conv"):
            named.append((f"{kind}{count[kind]}", module))

    if image:
        layers.append(torch.nn.Unflatten(1, image))  # a CSV row of c·h·w values → the image
        built, shape = image_layers(image, hidden)
        assert len(shape) == 1, f"{name}: the hidden layers must end flat, not {shape}"
        for kind, module in built:
            add(kind, module)
        lines += ["  layer " + line for line in hidden]
        width = shape[0]
    for units, *post in [] if image else hidden:
        add("dense", torch.nn.Linear(width, units))
        for word in post:
            add(word, torch.nn.BatchNorm1d(units) if word == "batchnorm" else ACT[word]())
        lines.append(" ".join(["  layer dense", str(units)] + post))
        width = units
    add("dense", torch.nn.Linear(width, outputs))
    lines.append(f"  layer dense {outputs}")
    model = torch.nn.Sequential(*layers)

    def state():
        out = {}
        for n, m in named:
            out[f"{n}.weight"] = m.weight.detach().clone()
            out[f"{n}.bias"] = m.bias.detach().clone()
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                out[f"{n}.running_mean"] = m.running_mean.detach().clone()
                out[f"{n}.running_var"] = m.running_var.detach().clone()
        return out

    write_safetensors(os.path.join(HERE, f"{name}.init.safetensors"), state())
    opt = make_opt(model.parameters())
    lossf = torch.nn.CrossEntropyLoss() if loss == "cross_entropy" else torch.nn.MSELoss()
    nb = (rows + batch - 1) // batch
    model.train()
    for step in range(steps):
        b = step % nb
        xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
        opt.zero_grad()
        lossf(model(xb), yb).backward()
        if clip and clip[0] == "norm":
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip[1])
        elif clip:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip[1])
        opt.step()
    write_safetensors(os.path.join(HERE, f"{name}.want.safetensors"), state())

    def write_csv(path, xs, ys):
        cols = [f"x{i}" for i in range(features)]
        with open(path, "w") as f:
            f.write(",".join(cols + ["y"]) + "\n")
            for i in range(len(xs)):
                vals = [repr(float(v)) for v in xs[i].tolist()]
                label = str(int(ys[i])) if loss == "cross_entropy" else repr(float(ys[i, 0]))
                f.write(",".join(vals + [label]) + "\n")

    write_csv(os.path.join(HERE, f"{name}.csv"), x, y)
    data = f"  train csv(\"{name}.csv\", label=\"y\")\n"
    if val:
        # Keel's val_loss: after the last step, in eval mode, the loss of each batch of the
        # script's batch size, weighted by the batch's size
        xv, yv = make_data(val)
        write_csv(os.path.join(HERE, f"{name}_val.csv"), xv, yv)
        data += f"  val   csv(\"{name}_val.csv\", label=\"y\")\n"
        model.eval()
        total = 0.0
        with torch.no_grad():
            for b in range(0, val, batch):
                xb, yb = xv[b:b + batch], yv[b:b + batch]
                total += float(lossf(model(xb), yb)) * len(xb)
        with open(os.path.join(HERE, f"{name}.want.json"), "w") as f:
            json.dump({"val_loss": total / val}, f)
            f.write("\n")
    with open(os.path.join(HERE, f"{name}.nn"), "w") as f:
        f.write(f"# Parity case written by tests/parity/gen.py: {opt_line}, {loss}, "
                f"{steps} steps.\n")
        f.write(defs)
        f.write(f"data d {{\n{data}}}\n\n")
        size = "x".join(map(str, image)) if image else str(features)
        f.write("network net {\n  input %s\n%s\n}\n\n" % (size, "\n".join(lines)))
        f.write(f"train net on d {{\n  loss      {loss}\n  optimizer {opt_line}\n"
                f"  batch     {batch}\n  epochs    {steps}\n  steps     {steps}\n")
        if clip:
            f.write(f"  clip      {clip[0]}={clip[1]}\n")
        f.write("}\n")


if __name__ == "__main__":
    for case in CASES:
        make_case(*case)
        print("wrote", case[0])
