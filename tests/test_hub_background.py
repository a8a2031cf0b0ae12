"""Checkpoint pushes in the background (issue 31): real runs push over HTTP to a local, slow Hub.

olah (tests/test_hub.py) mirrors repos read-only and takes no commits, so the Hub here is `FakeHub`: an HTTP server
that answers what `HfApi.create_repo` and `HfApi.upload_folder` ask (create, validate-yaml, preupload, tree, commit), keeps each
repo's files in a folder, records every commit with the time it arrived and the time it was answered, and can delay
or refuse requests.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from .conftest import tiny_argv
from .test_hub import STUDENT_FILES

# every test here trains in another process and uploads to a local Hub: the slow lane (docs/contributing.md)
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REPO = "me/duda-bg"


class FakeHub:
    """A Hub over HTTP for uploads: every file is taken as a regular (inline) file, each commit is applied to the
    repo's folder under `root`.

    Args:
        root: where the repos' files are kept (`root/ORG/NAME/...`).
        delay: seconds to sleep before answering a request, from `(kind, paths, summary)`: kind is "preupload" or
            "commit", paths the repo paths the request names, summary the commit message ("" for a preupload).
        refuse: the HTTP status to answer instead of applying a commit (None: apply it), from the same arguments.
        on_answer: called when a commit is about to be answered (after its delay); what it returns is recorded.
    """

    def __init__(
        self,
        root: Path,
        delay: Callable[[str, list[str], str], float] = lambda kind, paths, summary: 0.0,
        refuse: Callable[[str, list[str], str], int | None] = lambda kind, paths, summary: None,
        on_answer: Callable[[], object] = lambda: None,
    ):
        self.root, self.delay, self.refuse, self.on_answer = root, delay, refuse, on_answer
        self.commits: list[dict] = []  # summary, arrived, answered, status, added, deleted, seen (on_answer's)
        self.unknown: list[str] = []  # requests it does not implement
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                hub.handle(self, "GET")

            def do_POST(self):
                hub.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo_files(self, repo_id: str, under: str = "") -> dict[str, bytes]:
        """The files of a repo (under a folder of it), by repo path."""
        folder = self.root / repo_id / under
        return {str(p.relative_to(self.root / repo_id)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    # ---- the endpoints ----
    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        route = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|tree|commit)/([^/]+)(/.*)?", url.path)
        if method == "POST" and url.path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            (self.root / repo_id).mkdir(parents=True, exist_ok=True)
            return self.answer(request, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})
        if method == "POST" and url.path == "/api/validate-yaml":  # a model card's metadata, before it is committed
            return self.answer(request, 200, {})
        if route and method == "POST" and route[2] == "preupload":
            files = json.loads(body)["files"]
            time.sleep(self.delay("preupload", [f["path"] for f in files], ""))
            return self.answer(
                request, 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if route and method == "GET" and route[2] == "tree":
            repo = self.root / route[1]
            under = repo / unquote(route[4] or "/").lstrip("/")
            entries = [
                {
                    "type": "file",
                    "path": str(p.relative_to(repo)),
                    "size": p.stat().st_size,
                    "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                }
                for p in sorted(under.rglob("*"))
                if p.is_file()
            ]
            return self.answer(request, 200, entries)
        if route and method == "POST" and route[2] == "commit":
            return self.commit(request, route[1], body)
        self.unknown.append(f"{method} {request.path}")
        return self.answer(request, 404, {"error": f"FakeHub does not implement {method} {url.path}"})

    def commit(self, request: BaseHTTPRequestHandler, repo_id: str, body: bytes) -> None:
        arrived = time.monotonic()
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        summary = next(line["value"]["summary"] for line in lines if line["key"] == "header")
        added = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
        deleted = [line["value"]["path"] for line in lines if line["key"] in ("deletedFile", "deletedFolder")]
        assert not [line for line in lines if line["key"] not in ("header", "file", "deletedFile", "deletedFolder")]
        paths = sorted(added) + deleted
        time.sleep(self.delay("commit", paths, summary))
        status = self.refuse("commit", paths, summary) or 200
        record = {"summary": summary, "arrived": arrived, "status": status, "added": sorted(added), "deleted": deleted}
        if status == 200:
            repo = self.root / repo_id
            with self.lock:
                for path in deleted:
                    target = repo / path
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                for path, content in added.items():
                    (repo / path).parent.mkdir(parents=True, exist_ok=True)
                    (repo / path).write_bytes(content)
        record["seen"] = self.on_answer()
        record["answered"] = time.monotonic()
        self.commits.append(record)
        if status != 200:
            return self.answer(request, status, {"error": "FakeHub refuses this commit"})
        oid = hashlib.sha1(f"{repo_id}/{len(self.commits)}".encode()).hexdigest()
        return self.answer(request, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid})

    @staticmethod
    def answer(request: BaseHTTPRequestHandler, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """The environment of a run that pushes to `hub` (a token the fake Hub accepts, a cache of its own)."""
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_local_fake_token",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }


def checkpoint_files(folder: Path) -> dict[str, str]:
    """sha256 of each file of a checkpoint folder, by its path inside the folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def newest_checkpoint(output: Path) -> int:
    """The step of the newest checkpoint in a run's output folder (0: none yet)."""
    steps = [int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps, default=0)


def is_checkpoint_commit(summary: str) -> bool:
    return summary.startswith("Training in progress")


def step_of(summary: str) -> int:
    return int(re.search(r"step (\d+)", summary)[1])


def hub_flags(*extra: str) -> tuple[str, ...]:
    return ("--push_to_hub", "true", "--hub_model_id", REPO, "--hub_strategy", "checkpoint", "--save_strategy", "steps", *extra)


def train(argv: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_duda.py"), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def hub_root(tmp_path):
    return tmp_path / "hub"


def test_training_goes_on_while_a_checkpoint_uploads_and_the_repo_ends_with_the_last_checkpoint(tiny_benchmark, tmp_path, hub_root):
    """A checkpoint upload's preupload and commit take 2.5 s each to answer. While the first (step 1) is in flight the
    run saves steps 2 to 6 (the local folder holds a newer checkpoint when that commit is answered); a checkpoint
    saved while an upload runs waits, the newest replacing an older one waiting; what is uploaded is a snapshot, whole
    although `--save_total_limit 1` deleted checkpoint-1 before its files were read (the first preupload is answered
    once it is gone); the run waits for the last upload before it pushes the student, says so in one line, and the
    repo's last-checkpoint/ is the local checkpoint-6, byte for byte."""
    output = tmp_path / "run"
    first_deleted = []  # whether checkpoint-1 was gone when the first preupload was answered (then its files are read)

    def delay(kind: str, paths: list[str], summary: str) -> float:
        if not any(p.startswith("last-checkpoint/") for p in paths):
            return 0.0
        if kind == "preupload" and not first_deleted:
            deadline = time.monotonic() + 20
            while (output / "checkpoint-1").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            first_deleted.append(not (output / "checkpoint-1").exists())
        return 2.5

    hub = FakeHub(hub_root, delay=delay, on_answer=lambda: newest_checkpoint(output))
    try:
        argv = tiny_argv(tiny_benchmark, output, "--max_steps", "6", *hub_flags("--save_steps", "1", "--save_total_limit", "1"))
        done = train(argv, hub_env(hub, tmp_path))
    finally:
        hub.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert not hub.unknown
    checkpoints = [commit for commit in hub.commits if is_checkpoint_commit(commit["summary"])]
    steps = [step_of(commit["summary"]) for commit in checkpoints]
    # the first upload was in flight while training went on: the run had saved a later checkpoint when it was answered
    assert steps[0] == 1 and checkpoints[0]["seen"] > 1 and first_deleted == [True], hub.commits
    # one upload at a time, the newest waiting: fewer commits than saves, in order, the last one the last checkpoint
    assert steps == sorted(set(steps)) and steps[-1] == 6 and len(steps) < 6, steps
    for before, after in zip(hub.commits, hub.commits[1:]):
        assert after["arrived"] >= before["answered"] - 0.05, "a commit started while another was in flight"
    # each upload held a whole checkpoint (read from its snapshot: rotation had deleted checkpoint-1 by then)
    names = sorted(f"last-checkpoint/{name}" for name in checkpoint_files(output / "checkpoint-6"))
    assert all(commit["added"] == names for commit in checkpoints)
    assert sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-6"]
    # the student went last, after the run waited for the uploads (one line says how long)
    assert hub.commits[-1]["summary"] == "DUDA student after 6 steps"
    assert sorted(path for path in hub.repo_files(REPO) if "/" not in path or path.startswith("plots/")) == STUDENT_FILES
    waits = [line for line in done.stderr.splitlines() if "waited" in line and "checkpoint uploads" in line]
    assert len(waits) == 1 and f"to '{REPO}' to end (the newest: checkpoint-6)" in waits[0], done.stderr[-3000:]
    # the repo's last-checkpoint/ is the local last checkpoint, file for file
    pushed = {path.split("/", 1)[1]: hashlib.sha256(data).hexdigest() for path, data in hub.repo_files(REPO, "last-checkpoint").items()}
    assert pushed == checkpoint_files(output / "checkpoint-6")
    assert json.loads((hub_root / REPO / "last-checkpoint" / "trainer_state.json").read_text())["global_step"] == 6
    assert not (output / ".hub-push").exists()  # the snapshots are gone once uploaded


def test_a_failed_checkpoint_upload_is_one_warning_and_the_run_goes_on(tiny_benchmark, tmp_path, hub_root):
    """The Hub refuses the commit of checkpoint-2 (403): one warning line, the HubError's message naming the cause and
    the local checkpoint; training goes on, checkpoint-4 is pushed and so is the student, and the run ends with 0."""
    output = tmp_path / "run"
    hub = FakeHub(hub_root, refuse=lambda kind, paths, summary: 403 if summary.startswith("Training in progress, step 2,") else None)
    try:
        done = train(tiny_argv(tiny_benchmark, output, *hub_flags("--save_steps", "2")), hub_env(hub, tmp_path))
    finally:
        hub.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(commit["summary"], commit["status"]) for commit in hub.commits] == [
        ("Training in progress, step 2, checkpoint", 403),
        ("Training in progress, step 4, checkpoint", 200),
        ("DUDA student after 4 steps", 200),
    ]
    lines = [line for line in done.stderr.splitlines() if "cannot push" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    assert " WARNING duda_hf.training.hub_policy: checkpoint-2 is not pushed, training goes on: cannot push to 'me/duda-bg': " in lines[0]
    assert "the token may not write to this repo or organisation: 403 Forbidden" in lines[0] and "FakeHub refuses this commit" in lines[0]
    assert lines[0].endswith(f"The local files in '{output / 'checkpoint-2'}' are unchanged.")
    assert "Traceback" not in done.stderr
    # the local checkpoints are whole, and the repo holds the one that could be pushed
    assert checkpoint_files(output / "checkpoint-2").keys() == checkpoint_files(output / "checkpoint-4").keys()
    assert "model.safetensors" in checkpoint_files(output / "checkpoint-2")
    pushed = {path.split("/", 1)[1]: hashlib.sha256(data).hexdigest() for path, data in hub.repo_files(REPO, "last-checkpoint").items()}
    assert pushed == checkpoint_files(output / "checkpoint-4")


# transformers hands `--ddp_timeout` to the process group it creates on GPUs only (TrainingArguments._setup_devices
# leaves it out when accelerate launches on the CPU, so gloo waits 30 minutes there): this program creates the gloo
# group with it first, as transformers would on GPUs (accelerate keeps a group that exists), then runs duda-train.
TRAIN_WITH_DDP_TIMEOUT = """
import datetime, sys
import torch.distributed as dist
seconds = float(sys.argv[sys.argv.index("--ddp_timeout") + 1])
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=seconds))
from duda_hf.cli.train_duda import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_slow_upload_does_not_stop_a_ddp_run_at_its_timeout(tiny_benchmark, tmp_path, hub_root):
    """Two processes (gloo, CPU) with `--ddp_timeout 10`: the commit of checkpoint-2 takes 15 s to answer. The main
    process uploads it in the background, so the other never waits for it in a collective operation (which would
    abort after 10 s); the main process waits for it at the end, after the last collective, and pushes the student."""
    output = tmp_path / "run"
    hub = FakeHub(hub_root, delay=lambda kind, paths, summary: 15.0 if summary.startswith("Training in progress, step 2,") else 0.0)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    argv = tiny_argv(
        tiny_benchmark,
        output,
        "--per_device_train_batch_size",
        "1",
        "--dataloader_num_workers",
        "0",
        "--ddp_timeout",
        "10",
        *hub_flags("--save_steps", "2"),
    )
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    program = tmp_path / "train_with_ddp_timeout.py"
    program.write_text(TRAIN_WITH_DDP_TIMEOUT)
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port()), str(program)]
    try:
        done = subprocess.run(
            [*launch, *argv], cwd=ROOT, env=hub_env(hub, tmp_path), capture_output=True, text=True, timeout=300, check=False
        )
    finally:
        hub.close()
    errors = [line for line in done.stderr.splitlines() if "Error" in line or "error:" in line]
    assert done.returncode == 0, "\n".join(errors)[-4000:] or done.stderr[-4000:]
    assert [commit["summary"] for commit in hub.commits] == [
        "Training in progress, step 2, checkpoint",
        "Training in progress, step 4, checkpoint",
        "DUDA student after 4 steps",
    ]
    assert hub.commits[0]["answered"] - hub.commits[0]["arrived"] >= 15
    pushed = {path.split("/", 1)[1]: hashlib.sha256(data).hexdigest() for path, data in hub.repo_files(REPO, "last-checkpoint").items()}
    assert pushed == checkpoint_files(output / "checkpoint-4")
    assert json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    waits = [line for line in done.stderr.splitlines() if "waited" in line and "checkpoint uploads" in line]
    assert len(waits) == 1, done.stderr[-3000:]  # the main process, at its end


@pytest.mark.parametrize("refused", [False, True], ids=["accepted", "refused"])
def test_push_to_hub_blocking_false_returns_the_uploads_future(tiny_benchmark, tmp_path, hub_root, monkeypatch, refused):
    """`DudaTrainer.push_to_hub(blocking=False)` returns at once with a Future of the student's upload (the commit
    takes 3 s): its result is the commit URL, or its exception the HubError of a refused commit; blocking=True returns
    the commit URL once the commit is made."""
    from concurrent.futures import Future

    import huggingface_hub.constants

    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import build_trainer
    from duda_hf.export.hub import HubError
    from duda_hf.export.network import export_network

    hub = FakeHub(
        hub_root,
        delay=lambda kind, paths, summary: 3.0 if kind == "commit" else 0.0,
        refuse=lambda kind, paths, summary: 403 if refused else None,
    )
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_local_fake_token")
    try:
        trainer = build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "run", "--push_to_hub", "true", "--hub_model_id", REPO)))
        export_network(trainer.model.student, tmp_path / "run" / "student")
        started = time.monotonic()
        future = trainer.push_to_hub("student, in the background", blocking=False)
        returned = time.monotonic() - started
        assert isinstance(future, Future) and returned < 2 and not future.done()
        if refused:
            with pytest.raises(HubError, match=rf"cannot push to '{REPO}': the token may not write to this repo .* 403 Forbidden"):
                future.result(timeout=60)
        else:
            assert future.result(timeout=60).startswith(f"{hub.url}/{REPO}/commit/")
            assert sorted(hub.repo_files(REPO)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
            url = trainer.push_to_hub("student, again", blocking=True)
            assert isinstance(url, str) and url.startswith(f"{hub.url}/{REPO}/commit/") and hub.commits[-1]["summary"] == "student, again"
    finally:
        hub.close()
    assert [commit["summary"] for commit in hub.commits][:1] == ["student, in the background"]
