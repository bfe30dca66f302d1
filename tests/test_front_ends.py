"""API_SERVER_COUNT=2: the worker's process and one more front end share one engine core.

Each test starts a worker under the runpod SDK's production loop, against a fake Runpod job API.
"""

import contextlib
import http.server
import json
import re
import signal
import threading
import time

import anthropic
import openai
import psutil
import pytest

from worker_vllm.local.fake_runpod import FakeRunpod, start_worker, wait_for

pytestmark = pytest.mark.process  # each test starts worker processes of its own

JOINED = "front-end process 1 of 1 is taking jobs"


def native_job(job_id: str, max_tokens: int) -> dict:
    return {"id": job_id, "input": {"prompt": "hello", "stream": True, "max_batch_size": 4,
                                    "sampling_params": {"max_tokens": max_tokens, "ignore_eos": True}}}


def messages_job(job_id: str, max_tokens: int) -> dict:
    return {"id": job_id, "input": {"openai_route": "/v1/messages", "openai_input": {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}}}


def chat_job(job_id: str, max_tokens: int) -> dict:
    return {"id": job_id, "input": {"openai_route": "/v1/chat/completions", "openai_input": {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True}}}}


def start(fake: FakeRunpod, tmp_path) -> tuple:
    proc, log_path = start_worker(fake, tmp_path, {"API_SERVER_COUNT": "2", "MAX_CONCURRENCY": "8",
                                                   "SHUTDOWN_GRACE_SECONDS": "0.5"})
    if not wait_for(lambda: JOINED in log_path.read_text() or proc.poll() is not None, 300) or proc.poll() is not None:
        kill_tree(proc)  # else its engine core outlives the test, and slows every later one
        fake.close()
        pytest.fail(f"the other front end did not join:\n{log_path.read_text()[-4000:]}")
    return proc, log_path


@contextlib.contextmanager
def replaying(sse: str):
    """A base URL at which every POST gets `sse` back, verbatim, as the platform passes a job's stream on."""
    class Replay(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = sse.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def streamed(fake: FakeRunpod, job_id: str) -> str:
    return "".join(item["output"] for item in fake.streamed[job_id])


def kill_tree(proc) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            process.kill()


def front_end_processes(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
            and "EngineCore" not in p.name()]


def test_jobs_spread_over_both_processes_and_sigterm_drains_the_other_ones_jobs(tmp_path):
    # Ties go to the other front end: with none running, a job runs there.
    fake = FakeRunpod([])
    proc, log_path = start(fake, tmp_path)
    try:
        helpers = front_end_processes(proc)
        fake.queue.append({"id": "openai-404", "input": {"openai_route": "/v1/chat/completions", "openai_input": {
            "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}}})
        assert wait_for(lambda: "openai-404" in fake.done, 60), log_path.read_text()[-4000:]
        for job in (chat_job("chat-there", 30), messages_job("messages-there", 30)):  # run there too
            fake.queue.append(job)
            assert wait_for(lambda job_id=job["id"]: job_id in fake.done, 60), log_path.read_text()[-4000:]
        jobs = [native_job(f"native-{i}", 30) for i in range(3)] + [chat_job(f"chat-{i}", 30) for i in range(3)]
        # Taken in one batch, "long" first: it runs there too, until SIGTERM's grace ends, while the rest spread.
        fake.queue.extend([native_job("long", 2000), *jobs])
        assert wait_for(lambda: all(j["id"] in fake.done for j in jobs), 120), log_path.read_text()[-4000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-4000:]
    finally:
        kill_tree(proc)
        fake.close()
    log = log_path.read_text()
    for i in range(3):
        assert fake.done[f"native-{i}"]["output"][-1]["usage"]["output"] == 30, fake.done[f"native-{i}"]
        events = streamed(fake, f"chat-{i}").split("\n\n")
        usage = json.loads(events[-3][len("data: "):])["usage"]
        assert usage["completion_tokens"] == 30 and events[-2] == "data: [DONE]", events[-4:]
    # Each process logged the jobs it ran; the other front end's lines name it.
    served_there = set(re.findall(r"\[front end 1\] worker.jobs: job (\S+) ", log))
    served_here = set(re.findall(r"INFO worker.jobs: job (\S+) ", log))
    there = {"openai-404", "chat-there", "messages-there", "long"}
    assert there <= served_there and served_here, log[-4000:]
    assert served_there | served_here == there | {j["id"] for j in jobs}
    # The official clients read the streams the other front end relayed: every token, then the usage.
    with replaying(streamed(fake, "chat-there")) as base:
        chunks = list(openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=10).chat.completions
                      .create(model="-", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks), chunks
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30, chunks[-1]
    with replaying(streamed(fake, "messages-there")) as base, \
            anthropic.Anthropic(base_url=base, api_key="-", max_retries=0, timeout=10).messages.stream(
                model="-", max_tokens=30, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and text == "".join(block.text for block in final.content if block.type == "text")
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 30, final
    # An OpenAI error from there is still the JSON the runpod SDK stores, with vLLM's status.
    error = json.loads(fake.done["openai-404"]["error"])
    assert error["code"] == 404 and "no-such-model" in error["message"]
    # The job the other front end ran was aborted after the grace, with the reason, like a local one.
    assert fake.done["long"]["error"].startswith("the worker is shutting down; generation was aborted."), \
        fake.done["long"]
    assert helpers and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers)


@pytest.mark.parametrize("victim", ["front end", "engine core"])
def test_a_death_fails_the_jobs_and_the_worker_exits_non_zero(tmp_path, victim):
    # The first job runs in the other front end (ties go there), the second in the worker's process.
    fake = FakeRunpod([])
    proc, log_path = start(fake, tmp_path)
    try:
        fake.queue.append(native_job("there", 2000))
        assert wait_for(lambda: "there" in fake.streamed, 60), log_path.read_text()[-4000:]
        fake.queue.append(native_job("here", 2000))
        assert wait_for(lambda: "here" in fake.streamed, 60), log_path.read_text()[-4000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        if victim == "front end":
            targets = front_end_processes(proc)
        else:
            targets = [p for p in children if "EngineCore" in " ".join(p.cmdline())]
        assert len(targets) == 1, [p.cmdline() for p in children]
        targets[0].kill()
        killed = time.monotonic()
        code = proc.wait(timeout=30)
        exited_after = time.monotonic() - killed
    finally:
        kill_tree(proc)
        fake.close()
    assert code != 0
    assert exited_after < 5, f"exited {exited_after:.1f} s after the {victim} died"
    log = log_path.read_text()
    if victim == "front end":
        assert "front-end process 1 exited while it served this job" in fake.done["there"]["error"], fake.done
        assert "its front-end process FrontEnd_1 exited with code -9" in log, log[-3000:]
    else:  # the other front end cannot see the core die: the worker's process tells its jobs
        for job_id in ("there", "here"):
            assert "vLLM engine died" in fake.done[job_id]["error"], fake.done
