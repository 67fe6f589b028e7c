#!/usr/bin/python3
"""tests/parity/gen.py — reference cases from PyTorch for Keel's parity tests.

Run with Debian's python3-torch (`/usr/bin/python3 tests/parity/gen.py`); it rewrites, for
each case NAME in the table below:

  NAME.nn                  the Keel script (data NAME.csv, the network, loss, optimizer)
  NAME.csv                 the data (a header, feature columns, a label column)
  NAME.init.safetensors    PyTorch's initial weights, with Keel's names (dense1.weight, ...)
  NAME.want.safetensors    the weights after the script's number of steps in PyTorch
                           (parameters and batchnorm's running statistics)

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

# name, features, hidden layers [(units, layer, ...)]: a dense layer of that many units, then
# the named layers in order (an activation or "batchnorm"), outputs, loss, optimizer line,
# torch optimizer factory, batch, steps, rows, and optionally the number of validation rows
# (the case then gets NAME_val.csv and NAME.want.json).
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
    ("clip_value_adam_mse", 3, [(6, "tanh")], 1, "mse",
     "adam lr=0.01",
     lambda p: torch.optim.Adam(p, lr=0.01), 8, 20, 24, 0, {"clip": ("value", 0.02)}),
]


def make_case(name, features, hidden, outputs, loss, opt_line, make_opt, batch, steps, rows,
              val=0, options=None):
    clip = (options or {}).get("clip")
    assert loss == "cross_entropy" or outputs == 1, "a CSV holds one target column"
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
        if kind in ("dense", "batchnorm"):
            named.append((f"{kind}{count[kind]}", module))

    for units, *post in hidden:
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
            if isinstance(m, torch.nn.BatchNorm1d):
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
        f.write(f"data d {{\n{data}}}\n\n")
        f.write("network net {\n  input %d\n%s\n}\n\n" % (features, "\n".join(lines)))
        f.write(f"train net on d {{\n  loss      {loss}\n  optimizer {opt_line}\n"
                f"  batch     {batch}\n  epochs    {steps}\n  steps     {steps}\n")
        if clip:
            f.write(f"  clip      {clip[0]}={clip[1]}\n")
        f.write("}\n")


if __name__ == "__main__":
    for case in CASES:
        make_case(*case)
        print("wrote", case[0])
