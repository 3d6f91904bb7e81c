"""Automation conditions of the unattended model chain: drift check, retrain, promotion."""

import dagster as dg

from hybrid_pipeline.dagster_support.keys import TRAINING_SET, USER_FEATURES
from hybrid_pipeline.defs.models.names import DRIFT_CHECK_KEY, DRIFT_LOOKBACK, RETRAIN_CRON


def drift_check_condition() -> dg.AutomationCondition:
    """Run the drift check on a partition of ``gold/user_features`` once it was (re)materialized.

    Only partitions of the last :data:`DRIFT_LOOKBACK` (the daily run's day, and today's), once per
    materialization (``since_last_handled``: a request or an evaluation of the check handles it),
    never while the partition or the check itself is being run. This is how the daily run's
    ``02:00 -> bronze -> silver -> gold/user_features`` leads to a drift verdict without a click:
    the automation sensor requests the check after the daily run, apart from it, so a drifting
    day never fails the daily load.
    """
    AC = dg.AutomationCondition
    return (
        AC.in_latest_time_window(DRIFT_LOOKBACK)
        & AC.any_deps_updated().since_last_handled().with_label("features partition updated since the last check")
        & ~AC.any_deps_in_progress().with_label("features partition in progress")
        & ~AC.in_progress()
    ).with_label("check drift after each features update")


def purchase_retrain_condition() -> dg.AutomationCondition:
    """Retrain when (features updated AND drift detected, both since the last retrain) OR weekly; never while upstream runs.

    * features updated: a partition of ``gold/user_features`` or ``features/training_set`` was
      materialized since ``models/purchase_model`` was last requested/updated;
    * drift detected: since the last retrain, the ``feature_drift`` check of a partition of the
      last :data:`DRIFT_LOOKBACK` turned failed (WARN or ERROR; ``check_failed().newly_true()``,
      per partition). Dagster clears a partition's check status when the partition is
      rematerialized, so a failing verdict is always about the partition's newest rows; a
      failure the previous retrain already answered, or yesterday's failure while today's verdict
      is pending or passed, does not count again. The check runs by itself after each features
      update (:func:`drift_check_condition`). A verdict that arrives while ``gold/user_features``
      is being rewritten is ignored: the rerun of the check on the new rows decides;
    * weekly: ``on_cron("0 4 * * 1")`` (after its deps updated since the tick);
    * never while ``purchase_model`` itself or any dep is in progress (a condition that held
      meanwhile fires once the upstream run is over).
    """
    AC = dg.AutomationCondition
    features_updated = (
        AC.any_deps_updated()
        .allow(dg.AssetSelection.assets(USER_FEATURES, TRAINING_SET))
        .since_last_handled()
        .with_label("features updated since last retrain")
    )
    # A verdict on a partition being rewritten right now is stale: its rerun decides. This term also
    # keeps the two since_last_handled legs apart: Dagster keys a SINCE node's cursor by the class
    # names of its two children only, so two "any deps ... since last handled" legs on one asset
    # would share (and overwrite) one cursor.
    fresh_drift_verdict = (
        AC.any_deps_match(
            AC.in_latest_time_window(DRIFT_LOOKBACK)
            & AC.any_checks_match(AC.check_failed().newly_true()).allow(dg.AssetSelection.checks(DRIFT_CHECK_KEY))
        ).allow(dg.AssetSelection.assets(USER_FEATURES))
        & ~AC.any_deps_match(AC.in_progress()).allow(dg.AssetSelection.assets(USER_FEATURES))
    )
    drift_detected = fresh_drift_verdict.since_last_handled().with_label(
        "feature drift detected since last retrain (PSI check failed)")
    on_drift = (features_updated & drift_detected).with_label("features updated with drift")
    weekly = AC.on_cron(RETRAIN_CRON).with_label(f"weekly retrain ({RETRAIN_CRON} UTC)")
    return (
        (on_drift | weekly)
        & ~AC.any_deps_in_progress().with_label("upstream in progress")
        & ~AC.in_progress()
    ).with_label("retrain purchase model: drift or weekly, not while upstream runs")


def promotion_condition() -> dg.AutomationCondition:
    """Promote a newly trained version once its blocking gate passed (same run or later)."""
    AC = dg.AutomationCondition
    return (AC.eager() & AC.all_deps_blocking_checks_passed()).with_label("promote when the evaluation gate passed")
