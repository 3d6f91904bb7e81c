"""The lakehouse on object storage: the whole graph, racing writers and bad settings, on a local S3 endpoint.

The endpoint is an EMULATOR (moto's server mode, see :mod:`hybrid_pipeline_tests.lakehouse.s3_emulator`),
not AWS S3; the pipeline is configured exactly as for a real bucket: ``HYBRID_LAKEHOUSE_ROOT=s3://bucket/prefix``
and the standard ``AWS_*`` variables, nothing else.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from hybrid_pipeline.lakehouse import Lakehouse, catalog, storage
from hybrid_pipeline.lakehouse.storage import StorageConfigError
from hybrid_pipeline.media.store import ingest_landing_media, local_media_root
from hybrid_pipeline.settings import Settings
from hybrid_pipeline_tests.conftest import env_vars
from hybrid_pipeline_tests.lakehouse.s3_emulator import S3Emulator, s3_emulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def emulator() -> Iterator[S3Emulator]:
    with s3_emulator() as emu:
        yield emu


@pytest.fixture
def s3_env(emulator: S3Emulator, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fresh bucket, the AWS variables of the emulator in the environment, and the root's URI."""
    bucket = emulator.new_bucket()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    return SimpleNamespace(bucket=bucket, root=f"s3://{bucket}/lake", emulator=emulator)


# -- the root: refused before any write ------------------------------------------------------------
def write(lh: Lakehouse) -> None:
    """A first write to a fresh lakehouse (the root is checked before it)."""
    lh.replace_where("gold/first", pl.DataFrame({"x": [1]}), "true")


def test_a_missing_bucket_is_one_message_naming_the_root_setting_and_nothing_is_written(s3_env) -> None:
    with pytest.raises(StorageConfigError, match=r"HYBRID_LAKEHOUSE_ROOT='s3://no-such-bucket/lake': bucket 'no-such-bucket' does not exist"):
        write(Lakehouse("s3://no-such-bucket/lake"))
    names = [b["Name"] for b in s3_env.emulator.client().list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names


def test_an_unreachable_endpoint_names_aws_endpoint_url(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StorageConfigError, match=r"AWS_ENDPOINT_URL='http://127.0.0.1:9': no object store answers"):
        write(Lakehouse(s3_env.root))


def test_a_plain_http_endpoint_without_allow_http_names_aws_allow_http(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(StorageConfigError, match=r"^AWS_ALLOW_HTTP: .* set AWS_ALLOW_HTTP=true"):
        write(Lakehouse(s3_env.root))
    assert s3_env.emulator.keys(s3_env.bucket) == []


def test_unsafe_rename_is_refused_by_name(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    with pytest.raises(StorageConfigError, match=r"^AWS_S3_ALLOW_UNSAFE_RENAME is set"):
        Lakehouse(s3_env.root)
    assert s3_env.emulator.keys(s3_env.bucket) == []


def test_a_root_with_an_unknown_scheme_or_no_bucket_is_refused() -> None:
    with pytest.raises(StorageConfigError, match="HYBRID_LAKEHOUSE_ROOT='ftp://x/y': unsupported scheme 'ftp'"):
        Lakehouse("ftp://x/y")
    with pytest.raises(StorageConfigError, match="names no bucket"):
        Lakehouse("s3:///lake")


@pytest.fixture(scope="module")
def authenticating() -> Iterator[SimpleNamespace]:
    """An emulator that checks credentials: an IAM user with a key and full rights, and its bucket.

    moto lets the first requests through unauthenticated (``INITIAL_NO_AUTH_ACTION_COUNT``) so that
    the user can be made; every later request must be signed with a key it knows.
    """
    import boto3
    import json

    with s3_emulator(auth_free_requests=4) as emu:
        iam = boto3.client("iam", endpoint_url=emu.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="pipeline")
        iam.put_user_policy(UserName="pipeline", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        emu.client(key["AccessKeyId"], key["SecretAccessKey"]).create_bucket(Bucket="lake")
        yield SimpleNamespace(emulator=emu, key=key["AccessKeyId"], secret=key["SecretAccessKey"])


@pytest.mark.parametrize("case", ["unknown key", "wrong secret"])
def test_wrong_credentials_are_one_message_naming_the_aws_variables(authenticating, monkeypatch, case) -> None:
    emu = authenticating.emulator
    key, secret = ("nobody", "nothing") if case == "unknown key" else (authenticating.key, "not-the-secret")
    for name, value in emu.env(key, secret).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageConfigError, match=r"^AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the credentials were rejected"):
        write(Lakehouse("s3://lake/pipeline"))
    for name, value in emu.env(authenticating.key, authenticating.secret).items():
        monkeypatch.setenv(name, value)
    lh = Lakehouse("s3://lake/pipeline")  # the right key opens the same root
    assert lh.version("gold/anything") is None
    listing = emu.client(authenticating.key, authenticating.secret).list_objects_v2(Bucket="lake")
    assert listing["KeyCount"] == 0  # and the refused attempts wrote nothing


def _error_text(result: dg.ExecuteInProcessResult) -> str:
    """The messages of every step failure of a run, causes included."""
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.event_specific_data.error
            while error is not None:
                texts.append(error.message)
                error = error.cause
    return "\n".join(texts)


def test_a_daily_run_with_a_wrong_secret_fails_with_the_message_and_writes_nothing(authenticating, tmp_path, monkeypatch) -> None:
    from hybrid_pipeline.definitions import PIPELINE_JOB, build_definitions
    from hybrid_pipeline.sources.generator import GeneratorConfig, generate

    emu = authenticating.emulator
    for name, value in {**env_vars(tmp_path), **emu.env(authenticating.key, "not-the-secret"),
                        "HYBRID_LAKEHOUSE_ROOT": "s3://lake/daily"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster_home").mkdir()
    settings = Settings.from_env()
    generate(GeneratorConfig(days=1, events_per_day=50, seed=3, start_date=date(2024, 1, 1)), settings.landing_dir)
    with dg.instance_for_test() as instance:
        result = build_definitions(settings).resolve_job_def(PIPELINE_JOB).execute_in_process(
            instance=instance, partition_key="2024-01-01", raise_on_error=False)
    assert not result.success
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the credentials were rejected" in _error_text(result)
    listing = emu.client(authenticating.key, authenticating.secret).list_objects_v2(Bucket="lake")
    assert listing["KeyCount"] == 0


# -- commits: two writers, no lost commit --------------------------------------------------------------
def test_a_writer_with_a_stale_snapshot_commits_after_the_other_instead_of_over_it(s3_env) -> None:
    """Deterministic race: A reads version 0, B commits version 1, then A commits. With a conditional put
    (``If-None-Match``) A's attempt at version 1 is refused and it retries as version 2; an overwrite
    would have replaced B's commit."""
    uri = f"{s3_env.root}/gold/race"
    write_deltalake(uri, pa.table({"writer": ["init"]}))
    stale = DeltaTable(uri)
    write_deltalake(uri, pa.table({"writer": ["B"]}), mode="append")
    write_deltalake(stale, pa.table({"writer": ["A"]}), mode="append")
    table = DeltaTable(uri)
    assert table.version() == 2
    assert sorted(table.to_pyarrow_table()["writer"].to_pylist()) == ["A", "B", "init"]
    assert [h["operation"] for h in table.history()].count("WRITE") == 3


def _append_many(uri: str, writer: str, commits: int, env: dict[str, str]) -> None:
    os.environ.update(env)
    lh = Lakehouse(uri.rsplit("/", 2)[0])
    for i in range(commits):
        lh.append("gold/racing", pl.DataFrame({"writer": [writer], "i": [i]}))


def test_two_processes_appending_to_one_table_lose_no_commit(s3_env) -> None:
    lh = Lakehouse(s3_env.root)
    lh.append("gold/racing", pl.DataFrame({"writer": ["init"], "i": [-1]}))
    commits = 12
    env = s3_env.emulator.env()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(lh.uri("gold/racing"), w, commits, env)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = lh.read("gold/racing")
    assert lh.version("gold/racing") == 2 * commits
    for writer in ("a", "b"):
        assert sorted(rows.filter(pl.col("writer") == writer)["i"].to_list()) == list(range(commits))


# -- media: content-addressed files in the bucket -----------------------------------------------------
def test_media_files_are_stored_in_the_bucket_by_content_and_read_back(s3_env, tmp_path: Path) -> None:
    landing = tmp_path / "media"
    (landing / "images").mkdir(parents=True)
    (landing / "docs").mkdir()
    (landing / "docs" / "a.txt").write_text("hello bucket\n")
    (landing / "docs" / "same-bytes.txt").write_text("hello bucket\n")
    root = Lakehouse(s3_env.root).path("bronze", "media")
    records, rejected = ingest_landing_media(landing, root, "2024-01-01")
    assert not rejected and len(records) == 2 and records[1].duplicate_of == "docs/a.txt"
    assert [r.already_in_bronze for r in records] == [False, True]
    keys = s3_env.emulator.keys(s3_env.bucket, "lake/bronze/media/")
    assert keys == [f"lake/bronze/media/{records[0].bronze_path}"]
    again, _ = ingest_landing_media(landing, root, "2024-01-02")  # a re-drop: nothing new in the bucket
    assert all(r.already_in_bronze for r in again)
    absent = "00/" + "0" * 64 + ".txt"
    with local_media_root(root, [records[0].bronze_path, absent]) as local:
        assert (local / records[0].bronze_path).read_text() == "hello bucket\n"
        assert not (local / absent).exists()  # its reader fails on that file alone, as on a local store
    assert not local.exists()  # the read copy is gone; the bucket holds the file
    with pytest.raises(ValueError, match="not a bronze media path"), local_media_root(root, ["../../etc/passwd"]):
        pass


def test_a_local_media_store_is_read_in_place(tmp_path: Path) -> None:
    with local_media_root(tmp_path / "media", ["ab/" + "a" * 64 + ".png"]) as local:
        assert local == tmp_path / "media"


# -- the whole graph --------------------------------------------------------------------------------
DAYS = 10  # a label needs a complete 7-day horizon: the first days get labels
LAST_DAY = f"2024-01-{DAYS:02d}"


@pytest.fixture(scope="module")
def whole_graph(emulator: S3Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Every job of the graph on an ``s3://`` root, small: days, media, embeddings, features, training,
    predictions, maintenance. The working directory is a fresh folder, so whatever lands on local disk shows."""
    from hybrid_pipeline.cli import materialize
    from hybrid_pipeline.definitions import FEATURES_JOB, MEDIA_JOB
    from hybrid_pipeline.defs.embeddings.assets import EMBEDDINGS_JOB
    from hybrid_pipeline.defs.models.names import DIGIT_TRAINING_JOB, PREDICTIONS_JOB, PURCHASE_TRAINING_JOB
    from hybrid_pipeline.media.demo import write_demo_media
    from hybrid_pipeline.ml.registry import default_tracking_uri
    from hybrid_pipeline.sources.generator import GeneratorConfig, generate
    from hybrid_pipeline_tests.defs.test_models import materialization, model_definitions, run_job

    root = tmp_path_factory.mktemp("s3_graph")
    bucket = emulator.new_bucket()
    with pytest.MonkeyPatch.context() as mp_:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            mp_.delenv(key)
        for key, value in emulator.env().items():
            mp_.setenv(key, value)
        for key, value in {**env_vars(root), "HYBRID_LAKEHOUSE_ROOT": f"s3://{bucket}/lake"}.items():
            mp_.setenv(key, value)
        (root / "dagster_home").mkdir()
        workdir = root / "workdir"
        workdir.mkdir()
        mp_.chdir(workdir)
        settings = Settings.from_env()
        env = SimpleNamespace(root=root, settings=settings, lakehouse=Lakehouse(settings.lakehouse_root),
                              landing=settings.landing_dir)
        generate(GeneratorConfig(days=DAYS, events_per_day=300, seed=5, start_date=date(2024, 1, 1)), env.landing)
        write_demo_media(env.landing / "media", seed=5, n_docs=2, max_images=60)
        uri = default_tracking_uri(root / "mlflow")
        with dg.instance_for_test() as instance:
            daily = materialize([f"2024-01-{d:02d}" for d in range(1, DAYS + 1)], instance=instance, daily_only=True)
            defs = model_definitions(settings, uri)
            runs = {
                "features": run_job(defs, FEATURES_JOB, instance),
                "media": run_job(defs, MEDIA_JOB, instance),
                "embeddings": run_job(defs, EMBEDDINGS_JOB, instance),
                "train": run_job(defs, PURCHASE_TRAINING_JOB, instance, config={"ops": {"models__purchase_model": {
                    "config": {"min_training_rows": 30, "max_epochs": 3}}}}),
                "digits": run_job(defs, DIGIT_TRAINING_JOB, instance, config={"ops": {"models__digit_classifier": {
                    "config": {"min_training_rows": 10, "max_epochs": 1}}}}),
                "predict": run_job(defs, PREDICTIONS_JOB, instance, partition_key=LAST_DAY),
                "maintenance": defs.resolve_job_def("lakehouse_maintenance").execute_in_process(
                    instance=instance, raise_on_error=False),
            }
            yield SimpleNamespace(env=env, bucket=bucket, uri=uri, workdir=workdir, daily=daily, runs=runs,
                                  instance=instance, emulator=emulator,
                                  model=materialization(runs["train"], dg.AssetKey(["models", "purchase_model"])))


def test_every_run_of_the_graph_on_s3_succeeds(whole_graph) -> None:
    assert all(run.ok for run in whole_graph.daily), [r for r in whole_graph.daily if not r.ok]
    failed = {name: [e.message for e in run.all_events if e.is_failure] for name, run in whole_graph.runs.items()
              if not run.success}
    assert not failed
    from hybrid_pipeline_tests.defs.test_models import materialized_keys

    assert dg.AssetKey(["models", "digit_classifier"]) in materialized_keys(whole_graph.runs["digits"])
    assert dg.AssetKey(["gold", "predictions"]) in materialized_keys(whole_graph.runs["predict"])


def test_every_catalog_table_and_the_media_files_are_in_the_bucket_and_nothing_on_local_disk(whole_graph) -> None:
    keys = whole_graph.emulator.keys(whole_graph.bucket, "lake/")
    tables = {k.split("/_delta_log/")[0].removeprefix("lake/") for k in keys if "/_delta_log/" in k}
    assert tables == {t.name for t in catalog.TABLES}
    media = [k for k in keys if k.startswith("lake/bronze/media/")]
    assert len(media) >= 60
    stored = {Path(k).name for k in media}
    landing = whole_graph.env.settings.landing_dir
    local = [p for p in whole_graph.env.root.rglob("*") if not p.is_relative_to(landing)
             and (p.name == "_delta_log" or p.name in stored or p.suffix == ".parquet" and "data" not in p.parts)]
    assert local == []  # no table, no media file outside the bucket (key indexes are the repo's cache: data/)
    assert list(whole_graph.workdir.iterdir()) == []  # nothing fell back to ./data/lakehouse
    assert not (whole_graph.env.root / "lakehouse").exists()


def test_the_feast_view_reads_its_source_from_the_bucket_and_keeps_a_key_index_of_that_version(whole_graph) -> None:
    from hybrid_pipeline_tests.defs.test_models import materialization

    view = materialization(whole_graph.runs["features"], dg.AssetKey(["features", "user_features"]))
    lh = whole_graph.env.lakehouse
    assert view["source"] == lh.uri("gold/user_features") and view["source"].startswith("s3://")
    index = view["key_index"]
    assert index["rows"] > 0 and index["version"] == view["source_version"]
    # a cache of the repo (local, like the online store), of the bucket's table version
    assert Path(index["path"]).is_relative_to(whole_graph.env.settings.feature_repo_dir)


def test_maintenance_compacted_and_vacuumed_every_table_in_the_bucket(whole_graph) -> None:
    run = whole_graph.runs["maintenance"]
    everything = {t.name for t in catalog.TABLES}
    assert set(run.output_for_node("optimize_tables")) == everything
    assert set(run.output_for_node("vacuum_tables")) == everything
    lh = whole_graph.env.lakehouse
    for table in (t for t in catalog.TABLES if t.zorder_by):  # a Z-order always rewrites: one OPTIMIZE commit
        assert "OPTIMIZE" in [h["operation"] for h in lh.history(table.name)], table.name


def test_the_model_records_its_input_versions_and_is_reproduced_by_time_travel_from_the_bucket(whole_graph) -> None:
    from hybrid_pipeline.ml.reproduce import MODEL_NAME, reproduce

    lh = whole_graph.env.lakehouse
    versions = whole_graph.model["input_versions"]
    assert versions and all(lh.version(t) >= v for t, v in versions.items())
    report = reproduce(MODEL_NAME, 1, lh, whole_graph.uri)
    assert report.input_versions == versions
    assert report.hash_matches, report.summary()


def test_time_travel_reads_an_earlier_version_from_the_bucket(whole_graph) -> None:
    lh = whole_graph.env.lakehouse
    table = catalog.SILVER_EVENTS.name
    first = lh.read(table, version=0)
    assert first.height > 0 and lh.version(table) > 0
    assert lh.read(table).height >= first.height
    assert storage.is_remote(lh.uri(table))


def test_the_storage_options_carry_no_secret(whole_graph) -> None:
    """Credentials stay in the environment: storage options end up in the Feast registry and run metadata."""
    opts = whole_graph.env.lakehouse.storage_options
    assert not any("secret" in k.lower() or "key" in k.lower() or "token" in k.lower() for k in opts)
