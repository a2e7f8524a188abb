"""Real `metabert serve` processes: SIGTERM drains what was accepted; two workers answer alike."""

import concurrent.futures
import signal

import httpx
import pytest
from conftest import make_tiny, wait_until

from metabert.deploy.server.loadtest import server_output
from metabert.deploy.server.loadtest import start_server as start


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("proc") / "ckpt"
    model = make_tiny()
    model.with_config(exit_policy={"name": "entropy", "threshold": 0.5, "patience": 2, "chosen_on": "a test"})
    model.save_pretrained(ckpt)
    return ckpt


def test_sigterm_answers_every_accepted_request_before_exit(checkpoint):
    """The batcher would wait 60 s to fill its batch: the answers can only come from the drain that
    SIGTERM starts (the clients give up after 30 s)."""
    proc, url = start(checkpoint, "--max-batch", "64", "--max-wait-ms", "60000")
    n = 8
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        calls = [pool.submit(httpx.post, url + "/predict", json={"texts": [f"request {i}"]}, timeout=30)
                 for i in range(n)]
        wait_until(lambda: httpx.get(url + "/healthz").json()["in_flight"] == n, f"{n} requests in flight")
        proc.send_signal(signal.SIGTERM)
        answers = [call.result() for call in calls]
    assert [a.status_code for a in answers] == [200] * n
    assert all(len(a.json()["results"]) == 1 for a in answers)
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    log = server_output(proc)
    assert f"draining {n} in-flight requests" in log and "Traceback" not in log, log
    with pytest.raises(httpx.ConnectError):  # gone: later requests are refused, not half-answered
        httpx.post(url + "/predict", json={"texts": ["too late"]}, timeout=5)


def test_two_workers_answer_the_same_request_identically(checkpoint):
    proc, url = start(checkpoint, "--workers", "2")
    body = {"texts": ["a film of rare beauty", "dull", "neither good nor bad, just long"], "threshold": 0.4}
    answers = {}
    try:
        for _ in range(300):  # each new connection lands on either worker; both must be seen
            with httpx.Client(base_url=url, timeout=30) as one_connection:
                worker = one_connection.get("/healthz").json()["worker"]
                answers.setdefault(worker, one_connection.post("/predict", json=body).json())
            if len(answers) == 2:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert len(answers) == 2, f"only worker(s) {list(answers)} answered"
    a, b = ([{k: v for k, v in item.items() if k != "latency_ms"} for item in answer["results"]]
            for answer in answers.values())
    assert a == b
    assert len(set(answer["policy"] for answer in answers.values())) == 1
