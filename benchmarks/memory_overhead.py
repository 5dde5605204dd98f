"""Engine memory overhead over a raw onnxruntime session, each in a fresh process.

Two figures per model, both RSS after 200 runs of batch 1:
- engine overhead: what ``Engine(model)`` adds over what ``InferenceSession(path)`` adds, each
  measured from just before it is created (target: <= 10 MB);
- whole process: a script using edgebench end to end (import, validated load, engine) vs one
  using onnxruntime alone (what edgebench's validation with the onnx package costs, for the record).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, verdict  # noqa: E402

RAW = """
import json, sys, numpy as np, onnxruntime as ort, psutil
rss = lambda: psutil.Process().memory_info().rss
r0 = rss()
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                          np.int64 if "int64" in i.type else np.float32) for i in s.get_inputs()}
for _ in range(200): s.run(None, feeds)
print(json.dumps([rss() - r0, rss()]))
"""
ENGINE = """
import json, sys, numpy as np, onnxruntime, psutil, edgebench as eb
rss = lambda: psutil.Process().memory_info().rss
m = eb.load(sys.argv[1])
feeds = eb.Engine  # import the engine module before the baseline
r0 = rss()
eng = eb.Engine(m, threads=1)
feeds = eng.sample_feeds()
for _ in range(200): eng.run(feeds)
print(json.dumps([rss() - r0, rss()]))
"""


def measure(code: str, path: str, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    delta, total = min(runs)
    return delta / 2**20, total / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="mlp,mobilenet,tiny-bert")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import edgebench as eb

    banner("Engine RSS overhead over a raw onnxruntime session (fresh process each)")
    print(f"{'model':12s}{'raw +MB':>9s}{'engine +MB':>12s}{'overhead MB':>13s}"
          f"{'raw proc MB':>13s}{'eb proc MB':>12s}")
    worst = 0.0
    for name in args.models.split(","):
        path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
        eb.zoo.load(name).save(path)
        raw_d, raw_t = measure(RAW, path, args.repeats)
        eng_d, eng_t = measure(ENGINE, path, args.repeats)
        worst = max(worst, eng_d - raw_d)
        print(f"{name:12s}{raw_d:9.1f}{eng_d:12.1f}{eng_d - raw_d:13.1f}{raw_t:13.1f}{eng_t:12.1f}")
    print(f"worst engine overhead {worst:.1f} MB (target <= 10 MB): {verdict(worst <= 10)}")
    print("(the process columns include importing onnx for validation and the model's signature)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
