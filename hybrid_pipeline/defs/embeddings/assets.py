"""Embeddings as versioned assets, the vector indexes they feed, and the near-duplicates they reveal.

```
silver/document_text ─> silver/document_chunks ─> gold/document_embeddings ─┐   (+ index "documents")
silver/media_metadata ─────────────────────────> gold/image_embeddings ─────┼─> gold/media_near_duplicates
gold/image_training_manifest ───────────────────────────────────────────────┘   (check: near_duplicate_share)
gold/image_training_manifest  check near_duplicate_leakage (images with a near-duplicate in another split)
gold/document_embeddings ─> features/document_vectors (Feast view with a vector field, its online store)
```

* The embedding assets are ``pytorch`` assets (:func:`torch_asset`: GPU pool, batching, AMP on
  CUDA through the ``torch_device`` resource). Their code version carries the model identity
  (name + hash of its weights), taken from the settings when the definitions load, so pointing
  ``HYBRID_TEXT_EMBEDDING_MODEL`` at another model marks ``gold/document_embeddings`` stale in the
  UI; each materialization's data version is the model identity plus every item's content hash.
* A run embeds only rows whose content hash or model identity changed (the rest are read back
  from the table), writes the table in one commit, and rewrites the collection's vector index
  (``HYBRID_VECTOR_INDEX``), which ``serve`` and :class:`hybrid_pipeline.vectors.Searcher` pick up.
"""


from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.compute import torch_asset
from hybrid_pipeline.dagster_support.keys import (
    BRONZE_MEDIA_FILES,
    IMAGE_TRAINING_MANIFEST,
    SILVER_DOCUMENT_TEXT,
    SILVER_MEDIA_METADATA,
    key_of,
    table_of,
)
from hybrid_pipeline.dagster_support.loading import current_settings
from hybrid_pipeline.dagster_support.metadata import measured, table_metadata
from hybrid_pipeline.dagster_support.resources import LakehouseResource, TorchDeviceResource
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.media import chunking
from hybrid_pipeline.media.stats import MEDIA_FILES_SCHEMA
from hybrid_pipeline.settings import Settings

DOCUMENT_CHUNKS = key_of(catalog.SILVER_DOCUMENT_CHUNKS)
DOCUMENT_EMBEDDINGS = key_of(catalog.GOLD_DOCUMENT_EMBEDDINGS)
IMAGE_EMBEDDINGS = key_of(catalog.GOLD_IMAGE_EMBEDDINGS)
MEDIA_NEAR_DUPLICATES = key_of(catalog.GOLD_MEDIA_NEAR_DUPLICATES)

CODE_VERSION = "embeddings-v1"
SHARE_CHECK = "near_duplicate_share"
LEAKAGE_CHECK = "near_duplicate_leakage"
EMBEDDINGS_JOB = "embeddings_pipeline"
_OWNERS = ["team:ml-platform"]
GROUP = "embeddings"  # not a layer group: the daily (partitioned) load selects those
_IMAGE_SIZE = 16


class ChunkingConfig(dg.Config):
    """Chunk size and overlap in characters (a change gives new chunk ids, so every chunk is re-embedded)."""

    chunk_size: int = chunking.DEFAULT_CHUNK_SIZE
    chunk_overlap: int = chunking.DEFAULT_CHUNK_OVERLAP


class EmbeddingConfig(dg.Config):
    """Rows per forward pass."""

    batch_size: int = 64


class NearDuplicateConfig(dg.Config):
    """Cosine thresholds per collection, and the share of items in a pair above which the check warns."""

    image_threshold: float = 0.98
    document_threshold: float = 0.97
    max_share: float = 0.05


@dg.asset(key=DOCUMENT_CHUNKS, deps=[SILVER_DOCUMENT_TEXT], group_name=GROUP, kinds={"delta", "polars"},
          owners=_OWNERS, tags={"layer": "silver"}, code_version=CODE_VERSION,
          description="The text of silver/document_text split into overlapping character windows (size and overlap "
          "in run config), with the document's content hash, page, offsets and the chunk's own hash; chunk ids are "
          "stable across reruns. Empty or whitespace-only documents have no chunks (counted in metadata).")
@measured
def document_chunks(context: dg.AssetExecutionContext, config: ChunkingConfig,
                    lakehouse: LakehouseResource) -> dg.MaterializeResult:
    chunking.check_params(config.chunk_size, config.chunk_overlap)
    lh = lakehouse.lakehouse()
    docs = lh.scan_or_empty(table_of(SILVER_DOCUMENT_TEXT), dict(catalog.SILVER_DOCUMENT_TEXT.schema)).select(
        "sha256", "text").collect()
    chunks, empty = chunking.chunk_documents(docs.iter_rows(), config.chunk_size, config.chunk_overlap)
    table = table_of(DOCUMENT_CHUNKS)
    version = lh.replace_where(table, chunks, "true")
    context.log.info(f"{docs.height} documents -> {chunks.height} chunks ({len(empty)} without text)")
    return dg.MaterializeResult(metadata=table_metadata(
        lh.uri(table), catalog.SILVER_DOCUMENT_CHUNKS, chunks.height, version, documents=docs.height,
        empty_documents=len(empty), chunk_size=config.chunk_size, chunk_overlap=config.chunk_overlap))


def _files(lh) -> pl.DataFrame:  # noqa: ANN001
    return lh.scan_or_empty(table_of(BRONZE_MEDIA_FILES), dict(MEDIA_FILES_SCHEMA)).collect()


def _progress(context: dg.AssetExecutionContext, what: str):  # noqa: ANN202
    def report(done: int, total: int, rate: float) -> None:
        context.log.info(f"{what}: {done}/{total} embedded ({rate:.1f} rows/s)")
    return report


def _embedding_metadata(lh, table: str, out: pl.DataFrame, version: int, stats, identity, index, index_version: str,
                        data_version: str) -> dict:  # noqa: ANN001
    return table_metadata(
        lh.uri(table), catalog.table(table), out.height, version,
        embedded_now=stats.embedded, reused=stats.reused, dropped=stats.dropped, truncated=stats.truncated,
        failed=dg.MetadataValue.json(stats.failed), embed_rows_per_s=stats.rows_per_s,
        embed_seconds=round(stats.seconds, 3), model_id=identity.id, model_name=identity.name,
        model_sha256=identity.weights_sha256, index_version=index_version, index_rows=len(index),
        data_version_hash=data_version)


def build_document_embeddings(model_dir: Path, index_dir: Path) -> dg.AssetsDefinition:
    """``gold/document_embeddings`` for the text model in ``model_dir`` (its identity is in the code version)."""
    from hybrid_pipeline.ml.embeddings import text_model_identity

    identity = text_model_identity(model_dir)

    @torch_asset(key=DOCUMENT_EMBEDDINGS, deps=[DOCUMENT_CHUNKS, BRONZE_MEDIA_FILES], group_name=GROUP,
                 kinds={"delta"}, owners=_OWNERS, tags={"layer": "gold"}, code_version=f"{CODE_VERSION}+{identity.id}",
                 description=f"A sentence embedding ({identity.name}, weights sha256 {identity.weights_sha256[:16]}...) "
                 "of each document chunk, with the model identity and the chunk's content hash; only chunks whose "
                 "content or model changed are embedded. Rebuilds the `documents` vector index.")
    @measured
    def document_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, lakehouse: LakehouseResource,
                            torch_device: TorchDeviceResource) -> dg.MaterializeResult:
        from hybrid_pipeline.ml.embeddings import TextEmbedder
        from hybrid_pipeline.ml.training import torch_threads
        from hybrid_pipeline.vectors.build import data_version, embed_incrementally, index_of

        lh = lakehouse.lakehouse()
        table = table_of(DOCUMENT_EMBEDDINGS)
        schema = catalog.GOLD_DOCUMENT_EMBEDDINGS.schema
        chunks = lh.scan_or_empty(table_of(DOCUMENT_CHUNKS), dict(catalog.SILVER_DOCUMENT_CHUNKS.schema)).collect()
        stored = lh.scan_or_empty(table, dict(schema)).collect()
        current = chunks.select("chunk_id", "sha256", "content_sha256", "text")
        holder: dict[str, TextEmbedder] = {}

        def embed(batch: pl.DataFrame):  # noqa: ANN202 - loads the model only when something needs embedding
            if "m" not in holder:
                holder["m"] = TextEmbedder(model_dir, torch_device.settings(), batch_size=config.batch_size)
                if holder["m"].identity != identity:
                    raise dg.Failure(f"the model under {model_dir} changed since the definitions loaded "
                                     f"({holder['m'].identity.id} != {identity.id}); reload the code location")
            m = holder["m"]
            texts = batch["text"].to_list()
            tokens = m.token_counts(texts)
            return m.embed(texts), {"token_count": pl.Series(tokens, dtype=pl.Int64()),
                                    "truncated": pl.Series([t > m.window for t in tokens], dtype=pl.Boolean())}

        with torch_threads(torch_device.num_threads):
            out, stats = embed_incrementally(current, stored, "chunk_id", identity, embed, schema,
                                             batch_size=max(config.batch_size * 4, 64),
                                             progress=_progress(context, "chunks"))
        version = lh.replace_where(table, out, "true") if (stats.embedded or stats.dropped or not lh.exists(table)) \
            else lh.version(table)
        index = index_of("documents", out, _files(lh), "chunk_id", texts=chunks, table_version=version)
        index_version = index.save(index_dir / "documents")
        dv = data_version(identity, out, "chunk_id")
        context.log.info(f"document embeddings: {stats.embedded} embedded, {stats.reused} reused "
                         f"({stats.rows_per_s} rows/s), index {index_version}")
        return dg.MaterializeResult(
            metadata=_embedding_metadata(lh, table, out, version, stats, identity, index, index_version, dv),
            data_version=dg.DataVersion(dv))

    return document_embeddings


def build_image_embeddings(index_dir: Path) -> dg.AssetsDefinition:
    from hybrid_pipeline.ml.embeddings import PixelEmbedder

    identity = PixelEmbedder(_IMAGE_SIZE).identity

    @torch_asset(key=IMAGE_EMBEDDINGS, deps=[SILVER_MEDIA_METADATA, BRONZE_MEDIA_FILES], group_name=GROUP,
                 kinds={"delta"}, owners=_OWNERS, tags={"layer": "gold"}, code_version=f"{CODE_VERSION}+{identity.id}",
                 description="An embedding of each valid image (grayscale, upright, 16x16, centred, unit length: a "
                 "deterministic model that needs no download), with the model identity and the image's content hash; "
                 "only new images are embedded. Rebuilds the `images` vector index.")
    @measured
    def image_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, lakehouse: LakehouseResource,
                         torch_device: TorchDeviceResource) -> dg.MaterializeResult:
        import numpy as np

        from hybrid_pipeline.defs.media.assets import media_root
        from hybrid_pipeline.media.detect import IMAGE_TYPES
        from hybrid_pipeline.media.store import local_media_root, resolve_bronze_path
        from hybrid_pipeline.vectors.build import data_version, embed_incrementally, index_of

        lh = lakehouse.lakehouse()
        root = media_root(lakehouse)
        table = table_of(IMAGE_EMBEDDINGS)
        schema = catalog.GOLD_IMAGE_EMBEDDINGS.schema
        images = (lh.scan_or_empty(table_of(SILVER_MEDIA_METADATA), dict(catalog.SILVER_MEDIA_METADATA.schema))
                  .filter(pl.col("detected_type").is_in(sorted(IMAGE_TYPES)))
                  .select("sha256", "bronze_path").unique("sha256").collect()
                  .with_columns(content_sha256=pl.col("sha256")))
        stored = lh.scan_or_empty(table, dict(schema)).collect()
        model = PixelEmbedder(_IMAGE_SIZE, torch_device.settings(), batch_size=max(config.batch_size, 256))

        def embed(batch: pl.DataFrame):  # noqa: ANN202
            arrays = []
            paths = batch["bronze_path"].to_list()
            with local_media_root(root, paths, lh.storage_options) as local:  # the store itself, or a read copy of a bucket's files
                for path in paths:
                    try:
                        arrays.append(model.load(resolve_bronze_path(local, path)))
                    except Exception:  # noqa: BLE001 - described as valid upstream, unreadable now: one row fails, not the run
                        arrays.append(np.full((_IMAGE_SIZE, _IMAGE_SIZE), np.nan, dtype=np.float32))
            return model.embed_arrays(np.stack(arrays)), {}

        out, stats = embed_incrementally(images, stored, "sha256", identity, embed, schema, batch_size=1024,
                                         progress=_progress(context, "images"))
        version = lh.replace_where(table, out, "true") if (stats.embedded or stats.dropped or not lh.exists(table)) \
            else lh.version(table)
        index = index_of("images", out, _files(lh), "sha256", table_version=version)
        index_version = index.save(index_dir / "images")
        dv = data_version(identity, out, "sha256")
        return dg.MaterializeResult(
            metadata=_embedding_metadata(lh, table, out, version, stats, identity, index, index_version, dv),
            data_version=dg.DataVersion(dv))

    return image_embeddings


@dg.asset(key=MEDIA_NEAR_DUPLICATES, deps=[DOCUMENT_EMBEDDINGS, IMAGE_EMBEDDINGS, IMAGE_TRAINING_MANIFEST],
          group_name=GROUP, kinds={"delta", "numpy"}, owners=_OWNERS, tags={"layer": "gold"},
          code_version=CODE_VERSION,
          check_specs=[dg.AssetCheckSpec(SHARE_CHECK, asset=MEDIA_NEAR_DUPLICATES,
                                         description="WARN when more than max_share of the images or chunks are in a "
                                         "near-duplicate pair.")],
          description="Pairs of images, or of chunks from different documents, whose embeddings have a cosine at or "
          "above the threshold (run config), with each image's training split: a pair across splits is leakage.")
@measured
def media_near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicateConfig,
                          lakehouse: LakehouseResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    from hybrid_pipeline.ml.embeddings import vectors_of
    from hybrid_pipeline.vectors.build import near_duplicate_pairs

    lh = lakehouse.lakehouse()
    schema = catalog.GOLD_MEDIA_NEAR_DUPLICATES.schema
    splits = lh.scan_or_empty(table_of(IMAGE_TRAINING_MANIFEST), dict(catalog.GOLD_IMAGE_TRAINING_MANIFEST.schema)
                              ).select("sha256", "split").unique("sha256").collect()
    frames, shares = [], {}
    for collection, key, id_col, threshold in (("images", IMAGE_EMBEDDINGS, "sha256", config.image_threshold),
                                               ("documents", DOCUMENT_EMBEDDINGS, "chunk_id", config.document_threshold)):
        emb = lh.scan_or_empty(table_of(key), dict(catalog.table(table_of(key)).schema)).collect()
        if emb.height == 0:
            shares[collection] = {"items": 0, "in_pairs": 0, "share": 0.0}
            continue
        emb = emb.select(pl.col(id_col).alias("id"), "sha256", "embedding", "model_id")
        groups = emb["id"].to_list() if collection == "images" else emb["sha256"].to_list()
        pairs = near_duplicate_pairs(vectors_of(emb), emb["id"].to_list(), groups, threshold)
        sha = emb.select("id", "sha256")
        pairs = (pairs.join(sha.rename({"id": "left_id", "sha256": "left_sha256"}), on="left_id")
                 .join(sha.rename({"id": "right_id", "sha256": "right_sha256"}), on="right_id"))
        if collection == "images":
            pairs = (pairs.join(splits.rename({"sha256": "left_sha256", "split": "left_split"}), on="left_sha256", how="left")
                     .join(splits.rename({"sha256": "right_sha256", "split": "right_split"}), on="right_sha256", how="left"))
        else:
            pairs = pairs.with_columns(left_split=pl.lit(None, pl.String()), right_split=pl.lit(None, pl.String()))
        pairs = pairs.with_columns(
            collection=pl.lit(collection),
            cross_split=(pl.col("left_split").is_not_null() & pl.col("right_split").is_not_null()
                         & (pl.col("left_split") != pl.col("right_split"))).fill_null(False),
            model_id=pl.lit(emb["model_id"][0]))
        frames.append(pairs.select(list(schema)).cast(dict(schema)))
        in_pairs = pl.concat([pairs["left_id"], pairs["right_id"]]).n_unique() if pairs.height else 0
        shares[collection] = {"items": emb.height, "in_pairs": in_pairs, "pairs": pairs.height,
                              "share": round(in_pairs / emb.height, 6), "threshold": threshold}
    out = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    table = table_of(MEDIA_NEAR_DUPLICATES)
    version = lh.replace_where(table, out, "true")
    cross = int(out["cross_split"].sum()) if out.height else 0
    yield dg.MaterializeResult(metadata=table_metadata(
        lh.uri(table), catalog.GOLD_MEDIA_NEAR_DUPLICATES, out.height, version,
        shares=dg.MetadataValue.json(shares), cross_split_pairs=cross))
    worst = max((s["share"] for s in shares.values()), default=0.0)
    yield dg.AssetCheckResult(
        check_name=SHARE_CHECK, asset_key=MEDIA_NEAR_DUPLICATES, passed=worst <= config.max_share,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"max_share": config.max_share, "worst_share": worst, "shares": dg.MetadataValue.json(shares),
                  "cross_split_pairs": cross},
        description=None if worst <= config.max_share else
        f"{worst:.1%} of the items of a collection are in a near-duplicate pair (more than {config.max_share:.0%})")


@dg.asset_check(asset=IMAGE_TRAINING_MANIFEST, name=LEAKAGE_CHECK, additional_deps=[MEDIA_NEAR_DUPLICATES],
                description="WARN when images of the manifest have a near-duplicate (gold/media_near_duplicates) in "
                "another split: train/validation/test leakage.")
def near_duplicate_leakage(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    lh = lakehouse.lakehouse()
    manifest = lh.scan_or_empty(table_of(IMAGE_TRAINING_MANIFEST), dict(catalog.GOLD_IMAGE_TRAINING_MANIFEST.schema)
                                ).select("sha256", "split").collect()
    pairs = lh.scan_or_empty(table_of(MEDIA_NEAR_DUPLICATES), dict(catalog.GOLD_MEDIA_NEAR_DUPLICATES.schema)).filter(
        pl.col("collection") == "images").select("left_sha256", "right_sha256", "similarity").collect()
    # the manifest's splits now, not those recorded with the pairs: the check judges the current manifest
    joined = (pairs.join(manifest.rename({"sha256": "left_sha256", "split": "left_split"}), on="left_sha256")
              .join(manifest.rename({"sha256": "right_sha256", "split": "right_split"}), on="right_sha256")
              .filter(pl.col("left_split") != pl.col("right_split")))
    leaked = pl.concat([joined["left_sha256"], joined["right_sha256"]]).n_unique() if joined.height else 0
    share = leaked / manifest.height if manifest.height else 0.0
    by_splits = (joined.with_columns(splits=pl.concat_str(pl.min_horizontal("left_split", "right_split"), pl.lit("/"),
                                                          pl.max_horizontal("left_split", "right_split")))
                 .group_by("splits").len() if joined.height else pl.DataFrame())
    return dg.AssetCheckResult(
        passed=leaked == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"manifest_images": manifest.height, "images_with_cross_split_near_duplicate": leaked,
                  "share": round(share, 6), "cross_split_pairs": joined.height,
                  "pairs_by_splits": dg.MetadataValue.json(dict(by_splits.iter_rows()) if by_splits.height else {})},
        description=None if leaked == 0 else f"{leaked} manifest images ({share:.2%}) have a near-duplicate in another split")


@dg.definitions
def defs() -> dg.Definitions:
    """The embedding assets for the text model the settings name (its identity becomes their code version)."""
    from hybrid_pipeline.ml.embeddings import resolve_text_model_dir

    settings: Settings = current_settings()
    model_dir = resolve_text_model_dir(settings.text_embedding_model)
    index_dir = settings.vector_index_dir
    assets = [document_chunks, build_document_embeddings(model_dir, index_dir), build_image_embeddings(index_dir),
              media_near_duplicates]
    job = dg.define_asset_job(
        EMBEDDINGS_JOB,
        selection=dg.AssetSelection.assets(*assets) | dg.AssetSelection.checks(near_duplicate_leakage),
        description="Document chunks -> text and image embeddings (incremental) -> vector indexes -> near-duplicates.")
    return dg.Definitions(assets=[*assets, document_vectors], asset_checks=[near_duplicate_leakage], jobs=[job])


DOCUMENT_VECTORS_VIEW_KEY = dg.AssetKey(["features", "document_vectors"])


@dg.asset(key=DOCUMENT_VECTORS_VIEW_KEY, deps=[DOCUMENT_EMBEDDINGS], group_name="features", kinds={"feast", "sqlite"},
          owners=_OWNERS, output_required=False,
          description="Feast feature view `document_embeddings` (entity chunk) over gold/document_embeddings with the "
          "vector field `embedding` (vector_index, COSINE, the model's dimension), in the Feast repo "
          "<feature repo>/vectors whose SQLite online store has vector_enabled; every chunk's vector is written "
          "there. Nothing is done while no document has been embedded.")
def document_vectors(context: dg.AssetExecutionContext, lakehouse: LakehouseResource) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    from hybrid_pipeline.vectors.feast_view import DOCUMENT_VECTORS_VIEW, VECTOR_PROJECT, push_online, vector_repo_dir, write_vector_repo

    lh = lakehouse.lakehouse()
    table = table_of(DOCUMENT_EMBEDDINGS)
    version = lh.version(table)
    embeddings = lh.read(table, version=version) if version is not None else pl.DataFrame()
    if embeddings.height == 0:
        context.log.warning("features/document_vectors: no document embeddings yet; nothing registered")
        yield dg.AssetObservation(asset_key=DOCUMENT_VECTORS_VIEW_KEY, metadata={"skipped": "no document embeddings yet"})
        return
    dim = int(embeddings["embedding"].list.len().max())
    repo = vector_repo_dir(current_settings().feature_repo_dir)
    store = write_vector_repo(repo, lh.uri(table), dim)
    written = push_online(store, embeddings)
    yield dg.MaterializeResult(metadata={
        "feast_project": VECTOR_PROJECT, "feature_view": DOCUMENT_VECTORS_VIEW, "repo": str(repo),
        "vector_length": dim, "online_rows": written, "source_version": int(version),
        "model_id": str(embeddings["model_id"][0])})
