"""Choosing a backend: refusals that must come before anything is written (the ray backend itself is tested
against the local one in test_ray_backend.py, marked slow)."""

from __future__ import annotations

import sys

import pytest

from feat.errors import InputError
from feat.extract.registry import create_encoder
from feat.extract.runner import ExtractConfig, extract
from helpers import cli, register_test_encoders, text_table


def test_ray_backend_without_ray_names_the_extra(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, installed or not
    data = text_table(tmp_path / "d.csv", 5)
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", "--backend", "ray", expect=2)
    assert "pip install 'feat[ray]'" in result.output and not (tmp_path / "c").exists()


def test_an_unknown_backend_is_an_input_error(tmp_path, monkeypatch):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 5)
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", "--backend", "spark", expect=2)
    assert "--backend must be one of local, ray" in result.output and not (tmp_path / "c").exists()


def test_prepared_encoders_stay_on_the_local_backend(tmp_path, monkeypatch):
    """A run's encoders (fine-tuned weights, a stored fit) exist in this process only: a ray actor would load
    the registry's weights instead, so the combination is refused rather than silently wrong."""
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 5)
    config = ExtractConfig(data=data, cache=tmp_path / "c", encoders=["probe-text"], backend="ray")
    with pytest.raises(InputError, match="local backend only"):
        extract(config, prepared={"probe-text": create_encoder("probe-text")})
    assert not (tmp_path / "c").exists()


def test_threads_apply_to_the_forward_passes_and_are_restored(tmp_path, monkeypatch):
    import torch

    from helpers import ProbeTextEncoder

    register_test_encoders(monkeypatch)
    seen = []
    encode = ProbeTextEncoder.encode_texts
    monkeypatch.setattr(ProbeTextEncoder, "encode_texts",
                        lambda self, texts: seen.append(torch.get_num_threads()) or encode(self, texts))
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    data = text_table(tmp_path / "d.csv", 9)
    extract(ExtractConfig(data=data, cache=tmp_path / "c", encoders=["probe-text"], batch_size=4, threads=wanted))
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("args, message", [
    (["--threads", "-1"], "--threads must not be negative"),
    (["--threads", "1", "--backend", "ray"], "--threads applies to --backend local"),
])
def test_threads_refusals(tmp_path, monkeypatch, args, message):
    register_test_encoders(monkeypatch)
    data = text_table(tmp_path / "d.csv", 5)
    result = cli("extract", data, "-e", "probe-text", "-c", tmp_path / "c", *args, expect=2)
    assert message in result.output and not (tmp_path / "c").exists()
