"""Latency, throughput and memory of the demo Space under concurrent visitors: what its queue settings rest on.

    python benchmarks/space_load.py [--requests 20] [--concurrency 1 2] [--size 512 1024] [--large 3024 4032]

A MiT-B0 student (random weights, exported at 1024x512 like a training run's student/) is served by
spaces/duda-demo/app.py on 127.0.0.1. For each concurrency limit, in its own process: `--requests` visitors
submit distinct street images of `--size` at once (the queue is made large enough to accept all of them); each
request's latency (submit to answer, overlay files downloaded) and the server's resident memory above its idle
level are recorded. Then one `--large` photo alone: the memory a single large upload adds. Writes
benchmarks/results/space_load.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from _prerequisites import SPACE_INSTALL, require_packages

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces" / "duda-demo"


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def _street(size_wh: tuple[int, int], shade: int, folder: Path) -> str:
    from PIL import Image

    with Image.open(SPACE / "examples" / "street_dusk.jpg") as example:
        image = example.convert("RGB").resize(size_wh)
    image.putpixel((0, 0), (shade, shade, shade))  # distinct files, distinct results
    path = folder / f"street_{size_wh[0]}x{size_wh[1]}_{shade}.png"
    image.save(path)
    return str(path)


def child(concurrency: int, requests: int, size_wh: tuple[int, int], large_wh: tuple[int, int]) -> dict:
    """One queue setting measured; the image sizes are (W, H), as PIL takes them (the flags are H W)."""
    import gradio_client

    from duda_hf.export.network import export_network
    from duda_hf.networks.loading import build_network

    sys.path.insert(0, str(SPACE))  # as a Space runs app.py: its segmenter.py beside it
    spec = importlib.util.spec_from_file_location("duda_space_app", SPACE / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules["duda_space_app"] = app
    spec.loader.exec_module(app)
    app.QUEUE_CONCURRENCY, app.QUEUE_MAX_SIZE = concurrency, requests
    folder = Path(tempfile.mkdtemp())
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "cache")
    export_network(build_network("mit-b0", "random"), folder / "student", eval_size_hw=(512, 1024))
    demo = app.build_demo(model=str(folder / "student"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    images = [_street(size_wh, shade, folder) for shade in range(requests)]
    clients = [gradio_client.Client(demo.local_url, verbose=False) for _ in range(requests)]
    clients[0].predict(gradio_client.handle_file(images[0]), 0.6, api_name="/segment")  # warm-up
    idle = _rss_mib("VmRSS")
    _reset_peak()
    start = threading.Barrier(requests)

    def visit(number: int) -> float:
        upload = gradio_client.handle_file(images[number])
        start.wait()
        began = time.perf_counter()
        clients[number].predict(upload, 0.6, api_name="/segment")
        return time.perf_counter() - began

    began = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        latencies = sorted(pool.map(visit, range(requests)))
    wall = time.perf_counter() - began
    concurrent_peak = _rss_mib("VmHWM") - idle
    photo = _street(large_wh, 0, folder)
    _reset_peak()
    idle_large = _rss_mib("VmRSS")
    began = time.perf_counter()
    clients[0].predict(gradio_client.handle_file(photo), 0.6, api_name="/segment")
    large_seconds = time.perf_counter() - began
    large_peak = _rss_mib("VmHWM") - idle_large
    demo.close()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "size": f"{size_wh[0]}x{size_wh[1]}",
        "latency_s": {"min": round(latencies[0], 2), "median": round(statistics.median(latencies), 2), "max": round(latencies[-1], 2)},
        "seconds_per_request": round(wall / requests, 3),
        "idle_rss_mib": round(idle, 1),
        "peak_above_idle_mib": round(concurrent_peak, 1),
        "large_image": {
            "size": f"{large_wh[0]}x{large_wh[1]}",
            "seconds": round(large_seconds, 2),
            "peak_above_idle_mib": round(large_peak, 1),
        },
    }


def _size_wh(text: str) -> tuple[int, int]:
    """`WxH` as (W, H)."""
    width, height = text.lower().split("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="visitors submitting at once")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="queue concurrency limits to compare")
    parser.add_argument(
        "--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"), help="each visitor's image, H W, height first"
    )
    parser.add_argument(
        "--large",
        nargs=2,
        type=int,
        default=[3024, 4032],
        metavar=("H", "W"),
        help="the single large photo (a 12-megapixel phone picture), H W, height first",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "space_load.json"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        concurrency, requests = int(args.child[0]), int(args.child[1])
        print(json.dumps(child(concurrency, requests, _size_wh(args.child[2]), _size_wh(args.child[3]))))
        return
    from duda_hf.jsonio import write_json

    require_packages("gradio", "gradio_client", install=SPACE_INSTALL)
    runs = []
    for concurrency in args.concurrency:
        sizes = [f"{width}x{height}" for height, width in (args.size, args.large)]  # the child's own arguments: W x H, as PIL
        command = [sys.executable, __file__, "--child", str(concurrency), str(args.requests), *sizes]
        done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        if done.returncode != 0:
            raise SystemExit(f"concurrency {concurrency} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1])
    write_json(
        args.out,
        {
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "model": "MiT-B0 student, input 1024x512, random weights",
            "runs": runs,
        },
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
