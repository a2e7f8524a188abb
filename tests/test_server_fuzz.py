"""Property-based fuzzing of the real app (metabert.deploy.server.fuzzing): a short run here, the long one is
`metabert fuzz-server --cases 10000` (docs/SERVING.md)."""

from metabert.deploy.server.fuzzing import fuzz_app, tiny_app
from metabert.model.multi_exit import EagerRunner


def test_a_short_fuzzing_run_finds_no_server_error_and_no_schema_violation():
    report = fuzz_app(lambda: tiny_app(max_items=4, max_chars=200), cases=150, seed=1)
    assert report.failures == [] and report.failed_cases == 0
    assert report.cases >= 120
    assert report.by_source["schema positive"] > 20 and report.by_source["schema negative"] > 20
    assert report.by_source["raw"] > 20
    assert report.statuses[200] > 0 and any(400 <= s < 500 for s in report.statuses)


class BrokenRunner(EagerRunner):
    """A backend bug: every model call fails (so every request the server accepts gets 500)."""

    def start(self, inputs):
        raise RuntimeError("planted bug")


def test_fuzzing_finds_a_planted_server_error():
    """The fuzzer is not blind: server errors are found and reported with the request that made
    them (whatever it generates, some valid requests reach the model)."""
    from metabert.deploy.server.app import create_app

    def broken():
        app = tiny_app(max_items=4, max_chars=200)
        batcher = app.state.batcher
        return create_app(batcher.model, batcher.config, runner=BrokenRunner(batcher.model))

    report = fuzz_app(broken, cases=100, seed=2)
    assert report.failed_cases > 0
    assert any("500" in failure or "Server error" in failure for failure in report.failures), report.failures


def test_the_fuzz_server_command_writes_its_report(tmp_path):
    import json

    from metabert.cli import main

    out = tmp_path / "fuzz.json"
    assert main(["fuzz-server", "--cases", "60", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cases"] >= 40 and report["failed_cases"] == 0 and report["command"].startswith("metabert fuzz-server")
