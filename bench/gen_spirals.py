#!/usr/bin/python3
"""bench/gen_spirals.py — the 2-D toy set of the tiny-network benchmark: two interleaved spirals.

    /usr/bin/python3 bench/gen_spirals.py bench/data      # writes spirals_train.csv, spirals_test.csv

Class 0 and class 1 are the two arms of a spiral (one turn each, the second rotated by
half a turn), with Gaussian noise of 0.05; coordinates are about in [-1, 1]. Fixed seeds make
the files the same on every machine: 4,000 training points and 1,000 test points, classes
alternating row by row. Columns x,y,label (label 0 or 1). Keel reads them with
csv("…", label="label"), bench/torch_bench.py with the csv module.
"""
import math
import os
import random
import sys


def spirals(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        t = rng.random()  # position along the arm, 0 (centre) to 1 (outer end)
        angle = 1.0 * 2 * math.pi * t + math.pi * label
        r = 0.05 + 0.95 * t
        x = r * math.cos(angle) + rng.gauss(0, 0.05)
        y = r * math.sin(angle) + rng.gauss(0, 0.05)
        rows.append((x, y, label))
    return rows


def write(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("x,y,label\n")
        for x, y, label in rows:
            f.write(f"{x:.6f},{y:.6f},{label}\n")
    os.replace(tmp, path)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "data")
    os.makedirs(out, exist_ok=True)
    write(os.path.join(out, "spirals_train.csv"), spirals(4000, 1))
    write(os.path.join(out, "spirals_test.csv"), spirals(1000, 2))


if __name__ == "__main__":
    main()
