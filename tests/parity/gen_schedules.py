#!/usr/bin/python3
"""tests/parity/gen_schedules.py — learning-rate curves from torch.optim.lr_scheduler.

Run with Debian's python3-torch (`/usr/bin/python3 tests/parity/gen_schedules.py`). For
each case it writes tests/parity/schedules/NAME.nn (a script whose data has 100 samples,
batch 10: 10 steps per epoch, 10 epochs) and NAME.lr.csv: the rate PyTorch's scheduler
gives at each of the 100 steps, stepping the scheduler once per optimizer step. `make test`
compares `keel schedule NAME.nn` with it (relative error at most 1e-5).
"""

import math
import os

import torch
from torch.optim import lr_scheduler as S

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules")
BASE, STEPS, PER_EPOCH = 0.1, 100, 10

CASES = [
    ("constant", "constant", lambda o: S.LambdaLR(o, lambda s: 1.0)),
    ("step_decay", "step_decay 30 gamma=0.5", lambda o: S.StepLR(o, 30, 0.5)),
    ("step_decay_epochs", "step_decay 2 epochs gamma=0.5", lambda o: S.StepLR(o, 20, 0.5)),
    ("multistep", "multistep 20 50 70 gamma=0.3", lambda o: S.MultiStepLR(o, [20, 50, 70], 0.3)),
    ("exponential", "exponential 0.97", lambda o: S.ExponentialLR(o, 0.97)),
    ("exponential_epochs", "exponential 0.8 every=1 epochs",
     lambda o: S.LambdaLR(o, lambda s: 0.8 ** (s // PER_EPOCH))),
    ("cosine", "cosine min_lr=0.001", lambda o: S.CosineAnnealingLR(o, STEPS, 0.001)),
    ("cosine_restarts", "cosine_restarts 25", lambda o: S.CosineAnnealingWarmRestarts(o, 25)),
    ("cosine_restarts_mult", "cosine_restarts 10 mult=2 min_lr=0.005",
     lambda o: S.CosineAnnealingWarmRestarts(o, 10, 2, 0.005)),
    ("linear", "linear 30 start=0.2", lambda o: S.LinearLR(o, 0.2, 1.0, 30)),
    ("linear_decay", "linear_decay end=0.1", lambda o: S.LinearLR(o, 1.0, 0.1, STEPS)),
    ("polynomial", "polynomial power=2", lambda o: S.PolynomialLR(o, STEPS, 2.0)),
    ("one_cycle", "one_cycle peak=0.5",
     lambda o: S.OneCycleLR(o, 0.5, total_steps=STEPS, cycle_momentum=False)),
    ("inverse_sqrt", "inverse_sqrt warmup=10",
     lambda o: S.LambdaLR(o, lambda s: min((s + 1) / 10, math.sqrt(10 / (s + 1))))),
    ("warmup_then_cosine", "warmup 10 then cosine",
     lambda o: S.SequentialLR(o, [S.LambdaLR(o, lambda s: min(1.0, (s + 1) / 10)),
                                  S.CosineAnnealingLR(o, STEPS - 10)], [10])),
    ("warmup_epochs_then_linear_decay", "warmup 2 epochs then linear_decay",
     lambda o: S.SequentialLR(o, [S.LambdaLR(o, lambda s: min(1.0, (s + 1) / 20)),
                                  S.LinearLR(o, 1.0, 0.0, STEPS - 20)], [20])),
]


def main():
    os.makedirs(HERE, exist_ok=True)
    with open(os.path.join(HERE, "data.csv"), "w") as f:
        f.write("a,b,label\n")
        for i in range(STEPS):
            f.write(f"{i % 7 / 7},{i % 3 / 3},{i % 2}\n")
    for name, line, make in CASES:
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=BASE)
        sched = make(opt)
        rates = []
        for _ in range(STEPS):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        with open(os.path.join(HERE, f"{name}.lr.csv"), "w") as f:
            f.write("step,lr\n")
            for s, r in enumerate(rates):
                f.write(f"{s},{r!r}\n")
        with open(os.path.join(HERE, f"{name}.nn"), "w") as f:
            f.write(f"# Written by tests/parity/gen_schedules.py: torch's curve is {name}.lr.csv\n")
            f.write('data d {\n  train csv("data.csv", label="label")\n}\n\n')
            f.write("network net {\n  input 2\n  layer dense 2\n}\n\n")
            f.write(f"train net on d {{\n  loss      cross_entropy\n  optimizer sgd lr={BASE}\n"
                    f"  schedule  {line}\n  batch     10\n  epochs    10\n}}\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
