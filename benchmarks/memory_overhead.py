"""Engine memory overhead over a raw onnxruntime session: RSS, each in a fresh process.

Target: RSS(Engine) - RSS(raw session) <= 10 MB, same model file, after 200 runs.
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
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in s.get_inputs()}
for _ in range(200): s.run(None, feeds)
print(json.dumps(psutil.Process().memory_info().rss))
"""
ENGINE = """
import json, sys, numpy as np, psutil, edgebench as eb
eng = eb.Engine(sys.argv[1], threads=1)
feeds = eng.sample_feeds()
for _ in range(200): eng.run(feeds)
print(json.dumps(psutil.Process().memory_info().rss))
"""


def rss(code: str, path: str) -> int:
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="mlp,mobilenet")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import edgebench as eb

    banner("Engine RSS overhead over a raw onnxruntime session (fresh process each)")
    print(f"{'model':12s}{'raw MB':>10s}{'engine MB':>11s}{'overhead MB':>13s}")
    worst = 0.0
    for name in args.models.split(","):
        path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
        eb.zoo.load(name).save(path)
        raw = min(rss(RAW, path) for _ in range(args.repeats)) / 2**20
        eng = min(rss(ENGINE, path) for _ in range(args.repeats)) / 2**20
        worst = max(worst, eng - raw)
        print(f"{name:12s}{raw:10.1f}{eng:11.1f}{eng - raw:13.1f}")
    print(f"worst overhead {worst:.1f} MB (target <= 10 MB): {verdict(worst <= 10)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
