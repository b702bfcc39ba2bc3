"""Payload sampling through a real gateway: what the files hold is what was sent and answered, served and
shadow records of one request share its id, redacted inputs never reach the disk, and the answer echoes
only the id the client sent."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from gateway.demo import write_demo_repository
from gateway.observability.sample_files import iter_records, to_arrays
from tests.control_client import call
from tests.gateway_process import start_gateway


def test_sampled_requests_round_trip_and_pair_with_their_shadow(tmp_path: Path) -> None:
    config = write_demo_repository(tmp_path / "repo")
    samples = tmp_path / "samples"
    config.write_text(
        config.read_text().replace(
            "[endpoints.demo]", f'[sampling]\nrate = 1.0\ndirectory = "{samples}"\n\n[endpoints.demo]'
        )
        + '\n[endpoints.plain]\nchampion = { model = "simple", version = 1 }\n'
    )
    secret = tmp_path / "repo" / "secret.toml"
    secret.write_text(
        config.read_text().replace("rate = 1.0\n", 'rate = 1.0\nsensitive_inputs = ["INPUT1"]\n', 1)
    )
    gw = start_gateway(tmp_path / "gw", "--config", str(secret), "--state-dir", str(tmp_path / "state"))
    sent: dict[str, np.ndarray] = {}
    answered: dict[str, tuple[str, np.ndarray]] = {}
    try:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        rng = np.random.default_rng(5)
        for i in range(20):
            x = rng.random((1, 64), dtype=np.float32)
            inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            rid = f"r{i}" if i % 2 == 0 else ""
            result = client.infer("demo", [inp], request_id=rid)
            # The answer echoes what the client sent: nothing for a request without an id.
            assert result.get_response().id == rid
            if rid:
                sent[rid] = x
                answered[rid] = (result.get_response().model_version, result.as_numpy("OUTPUT0"))
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        ins = [
            grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
            grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        ins[0].set_data_from_numpy(a)
        ins[1].set_data_from_numpy(a * 1000 + 777_777)  # a marker that must never reach the disk
        client.infer("plain", ins, request_id="plain-1")
        status, recent = call(gw.ports["control"], "GET", "/v1/endpoints/demo/samples?limit=1000")
        assert status == 200 and recent, recent
        client.close()
    finally:
        assert gw.stop() == 0, gw.log()  # SIGTERM flushes the sample writer
    records = [to_arrays(r) for r in iter_records(samples)]
    by_id: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        by_id[r["request_id"]][r["role"]] = r
    for rid, x in sent.items():
        served_version, output = answered[rid]
        roles = by_id[rid]
        served = roles.get("champion") or roles.get("challenger")
        assert served is not None and served["version"] == served_version
        np.testing.assert_array_equal(served["inputs"]["INPUT0"], x)
        np.testing.assert_array_equal(served["outputs"]["OUTPUT0"], output)
        shadow = roles.get("shadow")
        if shadow is not None:  # shadow copies may be shed under load; when kept they pair by id
            assert shadow["version"] == "3"
            np.testing.assert_array_equal(shadow["inputs"]["INPUT0"], x)
    # Requests without an id were sampled under a generated id that links their served and shadow records.
    generated = [i for i in by_id if i and not i.startswith(("r", "plain"))]
    assert len(generated) == 10
    plain = by_id["plain-1"]["champion"]
    assert "INPUT1" in plain["redacted"] and "INPUT1" not in plain["inputs"]
    marker = (
        (a * 1000 + 777_777).astype("<i4").tobytes()
    )  # the whole redacted tensor (outputs derive from it)
    for f in samples.iterdir():
        assert marker not in f.read_bytes()
