"""CLIP ViT-B/32 image tower on CPUs without AMX: torch fp32 vs bf16 autocast, ONNX Runtime fp32, OpenVINO fp32.

Older CPUs are emulated on this one by capping the instruction sets the math libraries may use, before torch is
imported: ``ONEDNN_MAX_CPU_ISA`` (oneDNN: torch's bf16 matmuls and flash attention) and
``MKL_ENABLE_INSTRUCTIONS`` (MKL: torch's fp32 matmuls). Each ISA runs in its own process; inside it the
backends alternate, repetition by repetition, so load from other jobs hits them alike. oneDNN's kernel names
are recorded per ISA (``onednn_impl``), which shows the cap took effect. ONNX Runtime's own kernels (MLAS)
cannot be capped: its rows always use this CPU's full AVX-512, an upper bound for ORT on an older CPU.

    python benchmarks/cpu_isa.py                          # all ISAs, 2 threads, batch 32, 5 repetitions
    python benchmarks/cpu_isa.py --isas AVX2 --reps 3
    python benchmarks/cpu_isa.py --openvino-path /tmp/ov-site   # also OpenVINO (pip install --target ...)

Random weights (``CLIPVisionConfig()`` defaults: 88 M parameters, 224 px): honest speed, no quality claim.
Writes benchmarks/results/cpu-isa.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ISA cap -> (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, which CPUs have it)
ISAS = {
    "native": ("ALL", "", "no cap: this CPU's own instruction sets"),
    "AVX512_CORE_BF16": ("AVX512_CORE_BF16", "AVX512", "AMD Zen 4/5, Intel Cooper Lake: avx512_bf16, no AMX"),
    "AVX512_CORE_VNNI": ("AVX512_CORE_VNNI", "AVX512", "Intel Cascade Lake / Ice Lake: AVX-512, no bf16"),
    "AVX2": ("AVX2", "AVX2", "AMD Zen 1-3, Intel desktop before 12th gen: AVX2 only"),
}


def build(seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig()).eval()  # ViT-B/32 shapes, 224 px


def export(path: Path) -> None:
    """The image tower to fp32 ONNX with the exporter visdex uses (dynamo, opset 20, symbolic batch)."""
    import torch
    from torch.export import Dim

    model = build()

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).image_embeds

    x = torch.randn(2, 3, 224, 224)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        torch.onnx.export(Image().eval(), (x,), str(path), input_names=["pixel_values"], output_names=["embeds"],
                          opset_version=20, dynamo=True, external_data=False,
                          dynamic_shapes={"pixel_values": {0: Dim("batch", min=1, max=4096)}})  # fmt: skip


def onednn_impls(fn) -> list[str]:
    """oneDNN kernel names that ``fn`` ran (from its verbose log on fd 1): which ISA the cap left."""
    import torch

    with tempfile.TemporaryFile(mode="w+b") as log:
        fd = os.dup(1)
        sys.stdout.flush()
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            sys.stdout.flush()
            os.dup2(fd, 1)
            os.close(fd)
        log.seek(0)
        text = log.read().decode(errors="replace")
    isa = re.findall(r"isa:([^,\n]+)", text)
    impls = sorted({m for line in text.splitlines() if ",exec," in line for m in re.findall(r"(\w+:\w+)", line)[:1]})
    return (isa[:1] or ["?"]) + impls


def ort_session(path: Path, threads: int, spinning: bool = True, level: str = "ALL"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level, so.intra_op_num_threads = 3, threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_single(path: Path, threads: int, spinning: bool):
    """One pass whose ops are split across ``threads`` (ONNX Runtime's default)."""
    sess = ort_session(path, threads, spinning=spinning)
    return lambda x: sess.run(None, {"pixel_values": x})[0]


def ort_lanes(path: Path, lanes: int, level: str = "ALL"):
    """visdex's image path: one single-threaded pass per core, each on its share of the batch."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    sess, pool = ort_session(path, 1, level=level), ThreadPoolExecutor(lanes)

    def run(x):
        parts = np.array_split(x, lanes)
        return np.concatenate(list(pool.map(lambda p: sess.run(None, {"pixel_values": p})[0], parts)))

    return run


def openvino_runner(path: Path, threads: int, precision: str = "f32", hint: str = "LATENCY"):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint}
    compiled = core.compile_model(str(path), "CPU", config)
    kinds = set()  # the kernels of its matrix products: which ISA it picked
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("Convolution", "Subgraph", "FullyConnected"):
            kinds.add(f"{rt['layerType'].astype(str)}:{rt['primitiveType'].astype(str)}")
    kinds = sorted(kinds)
    if hint == "THROUGHPUT":  # several requests, each on its share of the batch (like visdex's ORT lanes)
        n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, n)

        def run(x):
            import numpy as np

            parts = np.array_split(x, n)
            outs: list = [None] * n
            queue.set_callback(lambda req, i: outs.__setitem__(i, req.get_output_tensor(0).data.copy()))
            for i, p in enumerate(parts):
                queue.start_async({0: p}, i)
            queue.wait_all()
            return np.concatenate(outs)

        return run, kinds
    request = compiled.create_infer_request()
    return (lambda x: request.infer({0: x})[0].copy()), kinds


def child(args) -> dict:
    """One ISA cap: every backend on the same pixels, alternating, ``reps`` timed batches each."""
    import numpy as np
    import torch

    args.threads = int(args.threads)
    torch.set_num_threads(args.threads)
    model = build()
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    x = torch.from_numpy(pixels)

    def torch_run(bf16: bool):
        def run(_):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(pixel_values=x).image_embeds.float().numpy()

        return run

    runners = {"torch fp32": torch_run(False), "torch bf16 autocast": torch_run(True)}
    info: dict = {"onednn_impl": onednn_impls(lambda: runners["torch bf16 autocast"](None)),
                  "matmul_800x768x3072_cpu_ms": matmul_ms()}  # fmt: skip
    onnx = Path(args.onnx)
    if not args.no_ort:
        runners["ort fp32 (visdex lanes)"] = ort_lanes(onnx, args.threads)
    if args.ort_options:
        for spinning in (True, False):
            name = "ort fp32 1 session, " + ("spinning" if spinning else "no spinning")
            runners[name] = ort_single(onnx, args.threads, spinning)
        runners["ort fp32 lanes, BASIC graph opt"] = ort_lanes(onnx, args.threads, level="BASIC")
    if args.openvino_path:
        sys.path.append(args.openvino_path)  # appended: the venv's numpy stays first
        import openvino

        info["openvino_version"] = openvino.__version__
        for hint in ("LATENCY", "THROUGHPUT"):
            run, kinds = openvino_runner(onnx, args.threads, "f32", hint)
            runners[f"openvino fp32 {hint.lower()}"] = run
            info[f"openvino fp32 {hint.lower()} kernels"] = kinds
        if args.isa in ("native", "AVX512_CORE_BF16"):
            run, kinds = openvino_runner(onnx, args.threads, "bf16", "THROUGHPUT")
            runners["openvino bf16 throughput"] = run
            info["openvino bf16 kernels"] = kinds
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    ref = runners["torch fp32"](pixels)
    cos, warm = {}, {}
    for name, run in runners.items():  # warm-up, and how far each backend's vectors are from torch fp32's
        t = time.perf_counter()
        out = np.asarray(run(pixels), dtype=np.float32)
        warm[name] = time.perf_counter() - t
        a = out / np.linalg.norm(out, axis=1, keepdims=True)
        b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        cos[name] = float(np.sum(a * b, axis=1).min())
    for rep in range(args.reps):
        for name, run in runners.items():
            if rep and warm[name] > 5 * warm["torch fp32"]:  # bf16 without bf16 hardware: once is enough to know
                continue
            t, c = time.perf_counter(), time.process_time()
            run(pixels)
            wall[name].append((time.perf_counter() - t) * 1000 / args.batch)
            cpu[name].append((time.process_time() - c) * 1000 / args.batch)
    rows = {}
    for name in runners:
        rows[name] = {"ms_per_image_median": round(float(np.median(wall[name])), 2),
                      "cpu_ms_per_image_median": round(float(np.median(cpu[name])), 2),
                      "ms_per_image": [round(v, 2) for v in wall[name]],
                      "min_cosine_to_torch_fp32": round(cos[name], 6)}  # fmt: skip
    return {"isa": args.isa, "threads": args.threads, "load_avg": os.getloadavg(), **info, "rows": rows}


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    return platform.processor()


def matmul_ms(reps: int = 10) -> dict:
    """One ViT-B MLP product (16 images x 50 tokens, 768 -> 3072) in fp32 (MKL) and bf16 (oneDNN), CPU ms: the
    kernel alone, without autocast's casts."""
    import numpy as np
    import torch

    x, w = torch.randn(800, 768), torch.randn(3072, 768)
    xb, wb = x.bfloat16(), w.bfloat16()
    out: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        torch.nn.functional.linear(x, w), torch.nn.functional.linear(xb, wb)  # warm-up
        for _ in range(reps):
            for name, (a, b) in (("fp32", (x, w)), ("bf16", (xb, wb))):
                c = time.process_time()
                torch.nn.functional.linear(a, b)
                out[name].append((time.process_time() - c) * 1000)
    return {k: round(float(np.median(v)), 2) for k, v in out.items()}


def run_child(args, isa: str, threads: int, onnx: Path) -> dict:
    """One process per ISA cap: the caps are read once, when torch / OpenVINO load oneDNN and MKL."""
    onednn, mkl, cpus = ISAS[isa]
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=onednn, OMP_NUM_THREADS=str(threads))
    if mkl:
        env["MKL_ENABLE_INSTRUCTIONS"] = mkl
    cmd = [sys.executable, __file__, "--child", "--isa", isa, "--onnx", str(onnx), "--threads", str(threads),
           "--batch", str(args.batch), "--reps", str(args.reps)]  # fmt: skip
    cmd += ["--ort-options"] if args.ort_options else []
    cmd += ["--openvino-path", args.openvino_path] if args.openvino_path else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{isa} failed:\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :]), "cpus": cpus}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isas", default=",".join(ISAS), help=f"comma-separated, of {', '.join(ISAS)}")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ort-options", action="store_true", help="also ORT session variants (spinning, graph level)")
    ap.add_argument("--openvino-path", default="", help="a folder with openvino installed (pip install --target)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu-isa.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--isa", default="native", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", default="", help=argparse.SUPPRESS)
    ap.add_argument("--no-ort", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    results, load_start = [], os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "clip-b32-image.onnx"
        export(onnx)
        for isa in args.isas.split(","):
            for threads in args.threads.split(","):
                results.append(run_child(args, isa, int(threads), onnx))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "rows"}), flush=True)
                for name, row in results[-1]["rows"].items():
                    wall, cpu = row["ms_per_image_median"], row["cpu_ms_per_image_median"]
                    print(f"  {name:34s} {wall:8.1f} ms/img  cpu {cpu:8.1f}")
    import onnxruntime
    import torch

    doc = {
        "what": "CLIP ViT-B/32 image tower (random weights, 224 px), ms per image, per ISA cap",
        "command": "python benchmarks/cpu_isa.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_name(),
        "threads": args.threads, "batch": args.batch, "reps": args.reps, "load_avg_at_start": load_start,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "openvino": results[0].get("openvino_version", "not run")},
        "results": results,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
