"""Training data: hash-based splits, a Dataset over raw bronze bytes, a prefetching loader."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from hybrid_pipeline.media import demo
from hybrid_pipeline.media.dataset import (
    ImageManifestDataset,
    build_image_manifest,
    class_names,
    make_loader,
    split_counts,
    split_for,
)
from hybrid_pipeline.media.store import MediaRecord, ingest_landing_media

Put = Callable[[str, bytes], Path]


def shas(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def test_split_is_a_pure_function_of_the_hash() -> None:
    assert [split_for(s) for s in shas(500)] == [split_for(s) for s in shas(500)]
    assert split_for("00000000" + "0" * 56) == "train"
    assert split_for(f"{int(0.85 * 2**32):08x}" + "0" * 56) == "validation"
    assert split_for("ffffffff" + "0" * 56) == "test"


def test_splits_are_roughly_80_10_10() -> None:
    counts = split_counts(shas(20_000))

    assert abs(counts["train"] / 20_000 - 0.8) < 0.015
    assert abs(counts["validation"] / 20_000 - 0.1) < 0.01
    assert abs(counts["test"] / 20_000 - 0.1) < 0.01


def test_split_rejects_what_is_not_a_hash() -> None:
    with pytest.raises(ValueError):
        split_for("../x")
    with pytest.raises(ValueError):
        split_for("abc")


@pytest.fixture
def digits(landing: Path, bronze: Path, put: Put) -> tuple[list[MediaRecord], dict[str, str], Path]:
    """Five real digit PNGs, labelled, ingested into bronze."""
    demo.write_demo_media(landing, n_docs=0, max_images=5)
    (landing / "images" / "copy_of_0.png").write_bytes((landing / "images" / "digit_00000.png").read_bytes())
    records, _ = ingest_landing_media(landing, bronze, "2024-03-01")
    labels = {f"digit_{i:05d}.png": str(i) for i in range(5)}
    return records, labels, landing


def test_manifest_has_one_row_per_labelled_image_with_a_hash_split(digits, bronze: Path) -> None:
    records, labels, _ = digits

    manifest = build_image_manifest(records, labels)

    assert manifest.columns == ["sha256", "bronze_path", "label", "label_name", "split"]
    assert manifest.height == 5  # the unlabelled copy shares digit 0's bytes: collapsed
    assert manifest["label"].to_list() == [0, 1, 2, 3, 4]
    assert manifest["split"].to_list() == [split_for(s) for s in manifest["sha256"]]


def test_manifest_leaves_out_content_with_conflicting_labels(digits) -> None:
    records, labels, _ = digits

    manifest = build_image_manifest(records, {**labels, "copy_of_0.png": "9"})

    assert manifest["label_name"].to_list() == ["1", "2", "3", "4"]
    assert manifest["label"].to_list() == [0, 1, 2, 3]  # indices into the classes actually used


def test_class_names_sort_numbers_numerically() -> None:
    assert class_names(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_names(["dog", "cat"]) == ["cat", "dog"]


def test_dataset_returns_a_1xHxW_float_tensor_and_the_label(digits, bronze: Path) -> None:
    records, labels, _ = digits
    dataset = ImageManifestDataset(build_image_manifest(records, labels), bronze)

    image, label = dataset[3]

    assert len(dataset) == 5
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label == 3


def test_dataset_decodes_exactly_the_landed_bytes(digits, bronze: Path) -> None:
    records, labels, landing = digits
    dataset = ImageManifestDataset(build_image_manifest(records, labels), bronze)

    image, _ = dataset[2]

    with Image.open(landing / "images" / "digit_00002.png") as im:
        expected = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    assert torch.equal(image[0], torch.from_numpy(expected))


def test_dataset_refuses_a_bronze_file_that_no_longer_matches_its_hash(digits, bronze: Path) -> None:
    records, labels, _ = digits
    manifest = build_image_manifest(records, labels)
    target = bronze / manifest["bronze_path"][1]
    target.write_bytes(demo.random_png_bytes(32, 32))

    with pytest.raises(ValueError, match="does not match"):
        ImageManifestDataset(manifest, bronze)[1]
    assert ImageManifestDataset(manifest, bronze, verify_sha256=False)[1][0].shape == (1, 32, 32)


def test_dataset_refuses_manifest_paths_outside_the_store(bronze: Path) -> None:
    rows = [{"sha256": "ab" * 32, "bronze_path": "../../../etc/passwd", "label": 0, "split": "train"}]
    with pytest.raises(ValueError, match="not a bronze media path"):
        ImageManifestDataset(rows, bronze)


def test_dataset_options_split_resize_normalize_and_transform(digits, bronze: Path) -> None:
    records, labels, _ = digits
    manifest = build_image_manifest(records, labels)
    rows = manifest.with_columns(pl.Series("split", ["train", "test", "train", "test", "test"])).to_dicts()

    train = ImageManifestDataset(rows, bronze, split="train", image_size=(16, 20), normalize=(0.5, 0.25),
                                 transform=lambda t: t * 0 + 7)

    assert len(train) == 2 and train.labels == [0, 2]
    image, _ = train[0]
    assert image.shape == (1, 16, 20) and bool((image == 7).all())


def test_loader_prefetches_batches_in_worker_processes(digits, bronze: Path) -> None:
    records, labels, _ = digits
    dataset = ImageManifestDataset(build_image_manifest(records, labels), bronze)

    loader = make_loader(dataset, batch_size=2, workers=1, prefetch_factor=2, pin_memory=False)
    batches = list(loader)

    assert loader.num_workers == 1 and loader.prefetch_factor == 2
    assert [tuple(x.shape) for x, _ in batches] == [(2, 1, 32, 32), (2, 1, 32, 32), (1, 1, 32, 32)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 2, 3, 4]


def test_shuffled_loader_order_is_reproducible_for_a_seed(digits, bronze: Path) -> None:
    records, labels, _ = digits
    dataset = ImageManifestDataset(build_image_manifest(records, labels), bronze)

    def order(seed: int) -> list[int]:
        return torch.cat([y for _, y in make_loader(dataset, batch_size=5, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1)
    assert sorted(order(2)) == [0, 1, 2, 3, 4]
