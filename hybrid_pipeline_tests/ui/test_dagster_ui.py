"""The Dagster UI in a real browser: `dagster dev` (webserver + daemon, the project's dagster.yaml)
over the instance a real run wrote, driven in headless Chromium as a person uses it.

The GraphQL endpoint says what should be on screen (groups, checks); the page must show it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from hybrid_pipeline.lakehouse import catalog

from .conftest import PROJECT, VIEWPORT, DemoRun, Server, free_port, save_screenshot, start_server

pytestmark = [pytest.mark.integration, pytest.mark.webserver, pytest.mark.browser]
LOCATION = "hybrid_pipeline"
LAUNCHED_ASSET = "gold/daily_metrics"


@pytest.fixture(scope="module")
def dagster_dev(demo_run: DemoRun) -> Iterator[Server]:
    """`dagster dev -w workspace.yaml` (what `make dev` runs through `dg dev`) on a free port, its code
    location loaded."""
    port = free_port()
    server = start_server(
        [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        demo_run.env, demo_run.root / "dagster_dev.log", f"http://127.0.0.1:{port}",
    )
    try:
        server.wait_until(lambda: bool(gql(server, "{ assetNodes { id } }")["assetNodes"]), 300, "dagster dev")
        yield server
    finally:
        server.stop()


def gql(server: Server, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{server.base}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def page(chromium: Any, dagster_dev: Server) -> Iterator[Any]:
    """A fresh tab; Dagster's one-time "Join the Dagster community" prompt is skipped whenever it shows."""
    tab = chromium.new_page(viewport=VIEWPORT)
    tab.set_default_timeout(60_000)
    tab.add_locator_handler(tab.get_by_text("Join the Dagster community"),
                            lambda: tab.get_by_role("button", name="Skip").click())
    try:
        yield tab
    finally:
        tab.close()


def test_global_lineage_renders_every_asset_group(page, dagster_dev, screenshots):
    groups = {n["groupName"] for n in gql(dagster_dev, "{ assetNodes { groupName } }")["assetNodes"]}
    assert {"bronze", "silver", "gold_analytics", "gold_features", "features", "models"} <= groups
    page.goto(f"{dagster_dev.base}/asset-groups")
    nodes = page.locator("foreignObject.group")  # the graph's (collapsed) group nodes, not the sidebar
    nodes.first.wait_for()
    page.wait_for_function("n => document.querySelectorAll('foreignObject.group').length >= n", arg=len(groups))
    # Each node's texts (SVG foreignObjects: read their leaf elements); one node per group, named by it.
    texts = nodes.evaluate_all(
        "nodes => nodes.map(n => [...n.querySelectorAll('*')].filter(e => !e.children.length)"
        ".map(e => e.textContent.trim()).filter(Boolean))")
    assert len(texts) == len(groups), texts
    assert sorted(next((t for t in node if t in groups), "?") for node in texts) == sorted(groups), texts
    save_screenshot(page, screenshots, "dagster", publish=True)


def test_silver_events_shows_its_column_schema_and_its_check_results(page, dagster_dev, screenshots):
    page.goto(f"{dagster_dev.base}/assets/silver/events")
    columns = page.locator("table", has=page.get_by_text("Column name", exact=True))
    columns.first.wait_for()
    for name, dtype in catalog.table("silver/events").schema.items():
        row = columns.first.locator("tr", has=page.get_by_text(name, exact=True))
        assert row.count() == 1, name
        assert str(dtype).split("(")[0] in row.inner_text(), (name, row.inner_text())
    save_screenshot(page, screenshots, "silver_events_columns")

    checks = gql(dagster_dev, """{ assetNodeOrError(assetKey: {path: ["silver", "events"]}) { ... on AssetNode {
        assetChecksOrError { ... on AssetChecks { checks { name } } } } } }""")
    names = {c["name"] for c in checks["assetNodeOrError"]["assetChecksOrError"]["checks"]}
    assert {"row_conservation", "event_id_unique"} <= names
    page.goto(f"{dagster_dev.base}/assets/silver/events?view=checks")
    page.get_by_text(f"Checks ({len(names)})").wait_for()
    # The list reads: each check's name (printed twice by the truncating label), then its latest result.
    listing = page.locator("body").inner_text().split("Execute all", 1)[1].splitlines()
    results: dict[str, str] = {}
    current = None
    for line in (line.strip() for line in listing):
        if line in names:
            current = line
        elif current and line and current not in results:
            results[current] = line
        if len(results) == len(names):
            break
    assert results == {name: "Succeeded" for name in names}
    save_screenshot(page, screenshots, "silver_events_checks")


@pytest.mark.parametrize("plot", ["loss_curve_plot", "roc_curve_plot"])
def test_the_purchase_model_shows_its_plots_from_metadata(page, dagster_dev, screenshots, plot):
    page.goto(f"{dagster_dev.base}/assets/models/purchase_model")
    row = page.locator("tr", has=page.get_by_text(plot, exact=True)).first
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    image = dialog.locator("img").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width >= 300 and height >= 300  # the matplotlib figure, not a broken-image icon
    save_screenshot(page, screenshots, f"purchase_model_{plot}")


def test_materializing_a_partition_from_the_launch_dialog_ends_in_a_successful_run(page, dagster_dev, demo_run,
                                                                                  screenshots):
    partition = demo_run.days[-1]
    page.goto(f"{dagster_dev.base}/assets/{LAUNCHED_ASSET}")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").wait_for()
    partitions = dialog.locator("input[type=text]").first  # the partition range field
    partitions.fill(partition)
    partitions.press("Enter")
    dialog.get_by_text("1 partition", exact=True).wait_for()
    save_screenshot(page, screenshots, "launch_dialog")
    dialog.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text("Launched run").wait_for()
    page.get_by_role("button", name="View").or_(page.get_by_role("link", name="View")).first.click()
    page.wait_for_url("**/runs/**")
    run_id = page.url.split("/runs/")[1].split("?")[0].split("/")[0]

    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        run = gql(dagster_dev, """query($id: ID!) { runOrError(runId: $id) { ... on Run {
            status tags { key value } assetSelection { path } } } }""", {"id": run_id})["runOrError"]
        status = run["status"]
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            break
        time.sleep(2)
    assert status == "SUCCESS", (status, dagster_dev.output()[-3000:])
    assert {"key": "dagster/partition", "value": partition} in run["tags"]
    assert run["assetSelection"] == [{"path": LAUNCHED_ASSET.split("/")}]
    page.get_by_text("Success", exact=True).first.wait_for(timeout=60_000)  # the run page says so too
    save_screenshot(page, screenshots, "launched_run")
