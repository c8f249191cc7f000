"""Network inference speed on 511 x 659 frames: layout, precision, batch size and threads.

Each network (MB-DT, MBL-Net, MBT-Net, shipped weights) runs on frames of the
``benchmark`` preset of :mod:`napari_cycleulm.simulate` (the stack of
``bench_stages.py``; MBL-Net and MBT-Net on MB-DT's output of it) with

* ``contiguous``: the plain ``net(x)`` under ``torch.inference_mode`` (the
  code path before :func:`napari_cycleulm.dl.inference.infer`);
* ``channels_last``: :func:`~napari_cycleulm.dl.inference.infer` with
  ``precision="float32"`` (channels-last input and weights);
* ``channels_last + bfloat16``: ``infer(..., precision="bfloat16")`` (the
  default where the hardware has native bfloat16);

for several batch sizes and thread counts.  It also reports how far each
variant's output is from the contiguous float32 output (maximum absolute
difference), so a speed-up that changes results shows it.

Usage::

    python benchmarks/inference_speed.py                       # 16 frames, 1 and 2 threads
    python benchmarks/inference_speed.py --device cuda          # on a GPU machine

Results are printed and written to ``bench_out/inference_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_stages import _load  # noqa: E402  (the same cached benchmark stack)

from napari_cycleulm.dl.inference import infer  # noqa: E402
from napari_cycleulm.dl.models import resolve_network  # noqa: E402
from napari_cycleulm.intensity import mbdt_input_scale  # noqa: E402

VARIANTS = ("contiguous", "channels_last", "channels_last+bfloat16")


def _call(net, x, variant):
    if variant == "contiguous":
        with torch.inference_mode():
            return net(x).float()
    return infer(net, x, "bfloat16" if variant.endswith("bfloat16") else "float32")


def _inputs(kind, frames, mb, n_frames, batch):
    """Batches of network input for ``n_frames`` frames (MBT-Net: windows of 8)."""
    if kind == "mbtnet":
        wins = torch.from_numpy(mb[: n_frames // 8 * 8].reshape(-1, 8, *mb.shape[1:]))
        return [wins[i : i + batch] for i in range(0, len(wins), batch)]
    src = torch.from_numpy(frames if kind == "mbdt" else mb)
    x = torch.stack([src[:-2], src[1:-1], src[2:]], dim=1)[:n_frames]
    if kind == "mblnet":
        x = x[:, 1:2]
    return [x[i : i + batch] for i in range(0, len(x), batch)]


def measure(kind, frames, mb, n_frames, batch, variant, device):
    net, dev, _ = resolve_network(kind, "default", device)
    if variant == "contiguous":  # the code path before dl.inference: default layout everywhere
        net = net.to(memory_format=torch.contiguous_format)
    fwd = net.translate if kind == "mbdt" else net
    batches = [b.to(dev) for b in _inputs(kind, frames, mb, n_frames, batch)]
    _call(fwd, batches[0][:1], variant)  # warm-up (oneDNN primitive creation)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = [_call(fwd, b, variant) for b in batches]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, torch.cat(outs).cpu()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="frames timed per network (a multiple of 8)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="MB-DT / MBL-Net batch sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    stack, _ = _load(Path(args.out), 100)
    frames = (stack[: args.frames + 2] * np.float32(mbdt_input_scale(stack))).astype(np.float32)
    from napari_cycleulm.dl.mbdt_inference import translate

    mb = translate(stack[: args.frames + 2], "default", device=args.device)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for kind in ("mbdt", "mblnet", "mbtnet"):
            for batch in ([1, 2] if kind == "mbtnet" else args.batches):
                ref = None
                for variant in VARIANTS:
                    seconds, out = measure(kind, frames, mb, args.frames, batch, variant, args.device)
                    ref = out if ref is None else ref
                    row = {"network": kind, "threads": threads, "batch": batch, "variant": variant,
                           "frames": args.frames, "seconds": round(seconds, 3),
                           "frames_per_s": round(args.frames / seconds, 3),
                           "max_abs_diff": float((out - ref).abs().max())}
                    rows.append(row)
                    print(f"{kind:7s} threads {threads} batch {batch} {variant:24s} "
                          f"{row['frames_per_s']:6.2f} frames/s  max |diff| {row['max_abs_diff']:.2e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device": args.device, "shape": list(stack.shape[1:]),
            "bf16_supported": bool(torch.backends.mkldnn.is_available()
                                   and torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    (out / "inference_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
