#!/usr/bin/python3
"""tests/parity/gen.py — reference cases from PyTorch for Keel's parity tests.

Run with Debian's python3-torch (`/usr/bin/python3 tests/parity/gen.py`); it rewrites, for
each case NAME in the table below:

  NAME.nn                  the Keel script (data NAME.csv, the network, loss, optimizer)
  NAME.csv                 the data (a header, feature columns, a label column)
  NAME.init.safetensors    PyTorch's initial weights, with Keel's names (dense1.weight, ...)
  NAME.want.safetensors    the weights after the script's number of steps in PyTorch

`make test` (tests/run.sh, group parity) runs each script with --init NAME.init.safetensors
and --no-shuffle and compares its final.safetensors with NAME.want.safetensors (relative
error at most 1e-4), without needing torch. Batches are taken in file order, the last
partial batch kept, exactly as `keel run --no-shuffle` does.
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

# name, features, hidden layers [(units, activation)], outputs, loss, optimizer line, torch
# optimizer factory, batch, steps, rows
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
]


def make_case(name, features, hidden, outputs, loss, opt_line, make_opt, batch, steps, rows):
    torch.manual_seed(sum(name.encode()))
    g = torch.Generator().manual_seed(len(name))
    x = torch.randn(rows, features, generator=g)
    if loss == "cross_entropy":
        y = torch.randint(0, outputs, (rows,), generator=g)
    else:
        y = (x.sum(dim=1, keepdim=True) * 0.5 + 0.1 * torch.randn(rows, 1, generator=g))

    layers, names, width, lines = [], [], features, []
    for k, (units, act) in enumerate(hidden):
        layers += [torch.nn.Linear(width, units), ACT[act]()]
        names.append(f"dense{k + 1}")
        lines.append(f"  layer dense {units} {act}")
        width = units
    layers.append(torch.nn.Linear(width, outputs))
    names.append(f"dense{len(hidden) + 1}")
    lines.append(f"  layer dense {outputs}")
    model = torch.nn.Sequential(*layers)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]

    def state():
        out = {}
        for n, m in zip(names, linears):
            out[f"{n}.weight"] = m.weight.detach().clone()
            out[f"{n}.bias"] = m.bias.detach().clone()
        return out

    write_safetensors(os.path.join(HERE, f"{name}.init.safetensors"), state())
    opt = make_opt(model.parameters())
    lossf = torch.nn.CrossEntropyLoss() if loss == "cross_entropy" else torch.nn.MSELoss()
    nb = (rows + batch - 1) // batch
    for step in range(steps):
        b = step % nb
        xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
        opt.zero_grad()
        lossf(model(xb), yb).backward()
        opt.step()
    write_safetensors(os.path.join(HERE, f"{name}.want.safetensors"), state())

    cols = [f"x{i}" for i in range(features)]
    with open(os.path.join(HERE, f"{name}.csv"), "w") as f:
        f.write(",".join(cols + ["y"]) + "\n")
        for i in range(rows):
            vals = [repr(float(v)) for v in x[i].tolist()]
            label = str(int(y[i])) if loss == "cross_entropy" else repr(float(y[i, 0]))
            f.write(",".join(vals + [label]) + "\n")
    with open(os.path.join(HERE, f"{name}.nn"), "w") as f:
        f.write(f"# Parity case written by tests/parity/gen.py: {opt_line}, {loss}, "
                f"{steps} steps.\n")
        f.write(f"data d {{\n  train csv(\"{name}.csv\", label=\"y\")\n}}\n\n")
        f.write("network net {\n  input %d\n%s\n}\n\n" % (features, "\n".join(lines)))
        f.write(f"train net on d {{\n  loss      {loss}\n  optimizer {opt_line}\n"
                f"  batch     {batch}\n  epochs    {steps}\n  steps     {steps}\n}}\n")


if __name__ == "__main__":
    for case in CASES:
        make_case(*case)
        print("wrote", case[0])
