"""Calibration cache: the key covers everything that changes the ranges; exact match only."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from fmabs_edge.calib.cache import CalibrationCache, CalibrationKey, image_set_fingerprint


def _key(**changes) -> CalibrationKey:
    base = CalibrationKey(
        graph_sha256="a" * 64,
        input_shape="64x64x3",
        preprocessing="stretch to SxS",
        method="minmax",
        options="[]",
        quantiser="onnxruntime 1.0",
        images="f" * 64,
        n_images=18,
        batch_size=8,
    )
    return dataclasses.replace(base, **changes)


FIELD_CHANGES = {
    "graph_sha256": "b" * 64,
    "input_shape": "32x32x3",
    "preprocessing": "letterbox",
    "method": "entropy",
    "options": "[('CalibPercentile', 99.9)]",
    "quantiser": "onnxruntime 2.0",
    "images": "e" * 64,
    "n_images": 17,
    "batch_size": 4,
}


def test_every_field_changes_the_digest():
    assert set(FIELD_CHANGES) | {"format"} == {f.name for f in dataclasses.fields(CalibrationKey)}
    digests = {_key(**{name: value}).digest() for name, value in FIELD_CHANGES.items()}
    assert len(digests) == len(FIELD_CHANGES) and _key().digest() not in digests


def test_image_fingerprint_follows_content_size_and_time(tmp_path):
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in files:
        path.write_bytes(b"12345")
    first = image_set_fingerprint(files)
    assert image_set_fingerprint(list(reversed(files))) == first  # order does not matter
    os.utime(files[0], ns=(1, 1))
    assert image_set_fingerprint(files) != first
    assert image_set_fingerprint(files[:1]) != image_set_fingerprint(files)


def _store(cache: CalibrationCache, key: CalibrationKey) -> None:
    lookup = cache.lookup(key)
    lookup.ranges_path.write_text("{}")  # what the quantiser writes on a miss
    cache.store(key, lookup)


def test_hit_only_on_an_exact_match_and_a_miss_names_the_field(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fmabs_edge.calib.cache")
    cache = CalibrationCache(tmp_path / "cache")
    first = cache.lookup(_key())
    assert not first.hit and "no cache" in first.reason
    first.ranges_path.write_text("{}")
    cache.store(_key(), first)

    again = cache.lookup(_key())
    assert again.hit and again.ranges_path == first.ranges_path

    other = cache.lookup(_key(batch_size=4, method="entropy"))
    assert not other.hit
    assert "batch_size" in other.reason and "method" in other.reason
    assert "Calibration cache miss" in caplog.text and "Calibration cache hit" in caplog.text


def test_ranges_without_their_key_are_never_read(tmp_path):
    cache = CalibrationCache(tmp_path)
    key = _key()
    lookup = cache.lookup(key)
    lookup.ranges_path.write_text("{}")  # ranges left behind, key never written
    again = cache.lookup(key)
    assert not again.hit
    assert not again.ranges_path.exists()  # removed, so the quantiser cannot take it as a hit


def test_a_changed_key_file_is_a_miss(tmp_path):
    cache = CalibrationCache(tmp_path)
    _store(cache, _key())
    key_file = next(tmp_path.glob("*.key.json"))
    key_file.write_text(key_file.read_text().replace('"n_images": 18', '"n_images": 99'))
    assert not cache.lookup(_key()).hit


@pytest.mark.parametrize("name", ["method", "images"])
def test_store_after_a_miss_keeps_both_entries(tmp_path, name):
    cache = CalibrationCache(tmp_path)
    _store(cache, _key())
    _store(cache, _key(**{name: FIELD_CHANGES[name]}))
    assert cache.lookup(_key()).hit and cache.lookup(_key(**{name: FIELD_CHANGES[name]})).hit
