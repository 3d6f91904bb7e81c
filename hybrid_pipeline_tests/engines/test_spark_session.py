"""SparkSettings: local defaults, cluster settings, optional Delta jars."""

from __future__ import annotations

import sys

import pytest

from hybrid_pipeline.engines.spark_session import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    SparkSettings,
    delta_jars_configured,
    get_spark,
    master_cores,
    spark_path,
)


@pytest.mark.parametrize(
    ("master", "cores"),
    [("local", 1), ("local[2]", 2), ("local[3, 4]", 3), ("spark://h:7077", None), ("yarn", None)],
)
def test_master_cores(master: str, cores: int | None) -> None:
    assert master_cores(master) == cores


def test_local_defaults_are_safe_and_sized_to_cores() -> None:
    conf = SparkSettings(master="local[2]").conf()
    assert conf["spark.sql.shuffle.partitions"] == "4"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.driver.memory"] == "2g"
    assert conf["spark.pyspark.python"] == sys.executable
    assert "spark.jars.packages" not in conf and "spark.sql.extensions" not in conf
    assert int(SparkSettings().conf()["spark.sql.shuffle.partitions"]) >= 2


def test_cluster_settings_size_shuffles_to_the_executors() -> None:
    s = SparkSettings(master="spark://h:7077", executor_instances=4, executor_cores=8, executor_memory="16g")
    conf = s.conf()
    assert conf["spark.sql.shuffle.partitions"] == "64"
    assert conf["spark.executor.memory"] == "16g" and conf["spark.executor.instances"] == "4"
    # Executors get the driver's interpreter unless an archive or an executor Python is set.
    assert conf["spark.pyspark.python"] == conf["spark.executorEnv.PYSPARK_PYTHON"] == sys.executable
    assert SparkSettings(master="yarn").effective_shuffle_partitions() == 200


def test_delta_jars_from_maven_or_local_paths_switch_on_the_delta_catalog() -> None:
    conf = SparkSettings(delta_packages=("io.delta:delta-spark_2.13:4.0.0",)).conf()
    assert conf["spark.jars.packages"] == "io.delta:delta-spark_2.13:4.0.0"
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION and conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    conf = SparkSettings(delta_jars=("/opt/jars/delta-spark.jar", "/opt/jars/delta-storage.jar")).conf()
    assert conf["spark.jars"] == "/opt/jars/delta-spark.jar,/opt/jars/delta-storage.jar"


def test_settings_from_the_environment_mapping() -> None:
    s = SparkSettings.from_env(
        {
            "HYBRID_SPARK_MASTER": "local[2]",
            "HYBRID_SPARK_DRIVER_MEMORY": "3g",
            "HYBRID_SPARK_SHUFFLE_PARTITIONS": "16",
            "HYBRID_SPARK_DELTA_PACKAGES": "io.delta:delta-spark_2.13:4.0.0, io.delta:delta-storage:4.0.0",
        }
    )
    assert (s.master, s.driver_memory, s.effective_shuffle_partitions()) == ("local[2]", "3g", 16)
    assert s.delta_packages == ("io.delta:delta-spark_2.13:4.0.0", "io.delta:delta-storage:4.0.0")
    assert SparkSettings.from_env({}) == SparkSettings()


def test_object_store_uris_use_hadoop_s3a() -> None:
    assert spark_path("s3://bucket/lake/silver/events") == "s3a://bucket/lake/silver/events"
    assert spark_path("/tmp/lake") == "/tmp/lake"


def test_the_shared_session_has_no_delta_jars_and_refuses_another_master(spark) -> None:
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert delta_jars_configured(spark) is False
    assert get_spark(SparkSettings(master="local[2]", shuffle_partitions=4)) is spark
    with pytest.raises(RuntimeError, match="already running"):
        get_spark(SparkSettings(master="local[1]"))
