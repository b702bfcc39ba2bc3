"""The demo repository is what every end-to-end test and benchmark serves, so it is checked here against
real onnxruntime sessions: a model that loads but computes the wrong thing would surface later as a
confusing gateway failure instead."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gateway.demo import build_mlp, save_model, write_demo_repository

MODELS = {
    "demo": (1, 2, 3),
    "simple": (1,),
    "simple_int8": (1,),
    "simple_string": (1,),
    "simple_identity": (1,),
    "identity_fp32": (1,),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_repo")
    write_demo_repository(root)
    return root


def session(repo: Path, name: str, version: int = 1) -> ort.InferenceSession:
    path = repo / "models" / name / str(version) / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def strings(values: np.ndarray) -> np.ndarray:
    return np.array([[str(v) for v in row] for row in values], dtype=object)


@pytest.mark.parametrize(("name", "version"), [(n, v) for n, vs in MODELS.items() for v in vs])
def test_every_model_loads_with_a_dynamic_batch(repo: Path, name: str, version: int) -> None:
    sess = session(repo, name, version)
    for tensor in [*sess.get_inputs(), *sess.get_outputs()]:
        assert tensor.shape[0] == "batch", (name, tensor.name, tensor.shape)


def test_write_returns_the_config_path_and_lays_out_the_repository(tmp_path: Path) -> None:
    config = write_demo_repository(tmp_path)
    assert config == tmp_path / "gateway.toml"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(MODELS)
    for name, versions in MODELS.items():
        folder = tmp_path / "models" / name
        assert sorted(int(p.name) for p in folder.iterdir() if p.is_dir()) == list(versions)
        model_config = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
        assert model_config["max_batch_size"] == 256
        if name == "demo":
            assert model_config["version_policy"] == {"policy": "all"}


def test_gateway_toml_declares_the_demo_endpoint(repo: Path) -> None:
    config = tomllib.loads((repo / "gateway.toml").read_text(encoding="utf-8"))
    assert config["model_repository"] == "models"
    assert config["state_dir"] == "state"
    assert config["endpoints"] == {
        "demo": {
            "champion": {"model": "demo", "version": 1},
            "challenger": {"model": "demo", "version": 2, "weight": 0.2},
            "shadow": {"model": "demo", "version": 3, "sample_rate": 1.0},
        }
    }


def test_demo_versions_are_related_but_different(repo: Path) -> None:
    x = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
    v1, v2, v3 = (session(repo, "demo", v).run(["OUTPUT0"], {"INPUT0": x})[0] for v in (1, 2, 3))
    for out in (v1, v2, v3):
        assert out.shape == (512, 10)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()
        assert 0.1 < float(out.std()) < 10.0
        assert len(np.unique(out.argmax(axis=1))) >= 4
    assert not np.allclose(v1, v2) and not np.allclose(v1, v3) and not np.allclose(v2, v3)
    agree_v2 = float((v1.argmax(1) == v2.argmax(1)).mean())
    agree_v3 = float((v1.argmax(1) == v3.argmax(1)).mean())
    # The shadow (v3) must disagree more than the challenger (v2), or a comparison would show nothing.
    assert 0.5 < agree_v3 < agree_v2 < 1.0


def test_demo_accepts_any_batch_size(repo: Path) -> None:
    sess = session(repo, "demo", 1)
    for n in (1, 7, 256):
        assert sess.run(None, {"INPUT0": np.zeros((n, 64), np.float32)})[0].shape == (n, 10)


def test_repository_is_byte_identical_across_writes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_demo_repository(first)
    write_demo_repository(second)
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    after = {p.relative_to(second): p.read_bytes() for p in second.rglob("*") if p.is_file()}
    assert before == after
    write_demo_repository(first)  # rewriting in place (idempotence) changes nothing either
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_simple_adds_and_subtracts(repo: Path) -> None:
    rng = np.random.default_rng(1)
    a, b = (rng.integers(-1000, 1000, (3, 16), dtype=np.int32) for _ in range(2))
    out0, out1 = session(repo, "simple").run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    assert out0.dtype == np.int32 and out1.dtype == np.int32
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def test_simple_int8_wraps_like_int8(repo: Path) -> None:
    a = np.array([[127, -128, 100, 5] + [0] * 12], dtype=np.int8)
    b = np.array([[1, 1, 100, -3] + [0] * 12], dtype=np.int8)
    out0, out1 = session(repo, "simple_int8").run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    assert out0.dtype == np.int8 and out1.dtype == np.int8
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out0, a + b)
        np.testing.assert_array_equal(out1, a - b)


def test_simple_string_adds_decimal_strings(repo: Path) -> None:
    rng = np.random.default_rng(2)
    a, b = (rng.integers(-10_000, 10_000, (2, 16)) for _ in range(2))
    out0, out1 = session(repo, "simple_string").run(
        ["OUTPUT0", "OUTPUT1"], {"INPUT0": strings(a), "INPUT1": strings(b)}
    )
    assert out0.tolist() == strings(a + b).tolist()
    assert out1.tolist() == strings(a - b).tolist()


def test_simple_identity_passes_nul_bytes_through(repo: Path) -> None:
    """onnxruntime's Python binding takes str elements only; NULs anywhere in them survive the trip."""
    data = np.array([["a\x00b"], ["\x00"], ["tail\x00"], [""], ["héllo"]], dtype=object)
    (out,) = session(repo, "simple_identity").run(["OUTPUT0"], {"INPUT0": data})
    assert out.tolist() == data.tolist()


def test_simple_identity_carries_arbitrary_bytes_as_latin1(repo: Path) -> None:
    """Non-UTF-8 payloads cannot be fed as bytes; decoding them as latin-1 maps every byte to one
    code point, so any byte string round-trips through Identity."""
    payloads = [bytes(range(256)), b"\xff\x00\xfe", b"\x00\x00"]
    data = np.array([[p.decode("latin-1")] for p in payloads], dtype=object)
    (out,) = session(repo, "simple_identity").run(["OUTPUT0"], {"INPUT0": data})
    assert [row[0].encode("latin-1") for row in out.tolist()] == payloads


def test_onnxruntime_does_not_carry_python_bytes_faithfully(repo: Path) -> None:
    """Pins the onnxruntime behaviour the runtime layer must work around: bytes objects are stringified
    with str() (b"ab" arrives as "b'ab'"), and fixed-width 'S' arrays are cut at the first NUL."""
    sess = session(repo, "simple_identity")
    (as_object,) = sess.run(["OUTPUT0"], {"INPUT0": np.array([[b"ab"]], dtype=object)})
    assert as_object.tolist() != [[b"ab"]] and as_object.tolist() != [["ab"]]
    (as_fixed,) = sess.run(["OUTPUT0"], {"INPUT0": np.array([[b"a\x00b"]], dtype="S3")})
    assert as_fixed.tolist() != [["a\x00b"]]


def test_identity_fp32_is_exact(repo: Path) -> None:
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    (out,) = session(repo, "identity_fp32").run(["OUTPUT0"], {"INPUT0": x})
    np.testing.assert_array_equal(out, x)


def test_build_mlp_is_generic_and_saveable(tmp_path: Path) -> None:
    model = build_mlp([8, 32, 3], seed=7, dtype=np.float64)
    path = tmp_path / "nested" / "dir" / "model.onnx"
    save_model(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["OUTPUT0"], {"INPUT0": np.ones((5, 8), np.float64)})[0]
    assert out.shape == (5, 3) and out.dtype == np.float64

    def serialized(sizes: list[int], seed: int) -> bytes:
        return build_mlp(sizes, seed=seed).SerializeToString()

    assert serialized([8, 32, 3], 7) == serialized([8, 32, 3], 7)
    assert serialized([8, 3], 7) != serialized([8, 3], 8)
    with pytest.raises(ValueError):
        build_mlp([8], seed=7)
