"""Who may call the server: loopback by default, a bearer key for anything else."""

import hmac
import pytest
from conftest import make_tiny
from fastapi.testclient import TestClient

from metabert.deploy.server import config as server
from metabert.deploy.server.app import create_app
from metabert.deploy.server.config import ServerConfig

KEY = "k3y-for-the-tests-0123456789"


def client(**config):
    return TestClient(create_app(make_tiny(), ServerConfig(**config), api_key=KEY))


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong-key-of-some-length"},
                                     {"authorization": f"Basic {KEY}"}, {"authorization": KEY}])
def test_predict_without_the_right_key_is_401(headers):
    with client() as c:
        r = c.post("/predict", json={"texts": ["good"]}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_the_key_is_compared_in_constant_time_and_lets_the_request_in(monkeypatch):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    with client() as c:
        r = c.post("/predict", json={"texts": ["good"]}, headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, r.text
    assert compared == [(KEY.encode(), KEY.encode())]


def test_probes_stay_open_unless_protected():
    with client() as c:
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
    with client(protect_probes=True) as c:
        assert c.get("/healthz").status_code == 401 and c.get("/metrics").status_code == 401
        auth = {"authorization": f"Bearer {KEY}"}
        assert c.get("/healthz", headers=auth).status_code == 200
        assert 'status="401"' in c.get("/metrics", headers=auth).text  # refusals are counted


def test_serve_binds_loopback_by_default():
    from metabert.cli import build_parser

    assert build_parser().parse_args(["serve", "--checkpoint", "x"]).host == "127.0.0.1"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert server.is_loopback(host) is loopback


def test_serve_refuses_an_open_host_without_a_key(tmp_path, capsys):
    from metabert.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "never-read"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--api-key-file" in err and "--allow-unauthenticated" in err


@pytest.mark.parametrize("content", ["", "short", "two words but long enough"])
def test_a_bad_key_file_is_refused(tmp_path, content):
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(ValueError, match="at least 16 characters"):
        server.read_api_key(str(path))
