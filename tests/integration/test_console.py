"""The web console in a real browser: Chromium, driven by Playwright, against an in-process Warren.

The console is plain JavaScript over the management API, so only a browser shows that its fetches,
routing, refreshes and forms work together. Waits are Playwright's auto-retrying `expect`s (the
pages refresh every 5 s), never fixed sleeps. WARREN_SCREENSHOTS=1 also rewrites the screenshots
in docs/ (console-overview.png, console-queue.png).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from broker.config import load_config
from broker.pytest_plugin import EmbeddedBroker
from tests.support import PROJECT_ROOT, free_port, unique

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "the console test needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip(
    "playwright.sync_api",
    reason="the console test needs Playwright for Python (pip install playwright)",
)
Browser = playwright_sync.Browser
Page = playwright_sync.Page
expect = playwright_sync.expect

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
VIEWPORT = {"width": 1280, "height": 800}
# Pages refresh every 5 s: a value the API already has shows within about two refreshes.
WAIT_MS = 15_000
SCREENSHOTS = os.environ.get("WARREN_SCREENSHOTS") == "1"
DOCS = PROJECT_ROOT / "docs"


@pytest.fixture(scope="module")
def warren(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """Warren on its own thread and loop: Playwright's sync API refuses a running event loop."""
    config = load_config().with_overrides(
        port=0,
        data_dir=str(tmp_path_factory.mktemp("console") / "d"),
        metrics_port=0,
        management_port=free_port(),
    )
    broker = EmbeddedBroker(config).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def console_url(warren: EmbeddedBroker) -> str:
    return f"http://127.0.0.1:{warren.broker.config.management.listener.port}/"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (starting one costs about a second)."""
    expect.set_options(timeout=WAIT_MS)
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context per test, so sessionStorage (the credentials) starts empty."""
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield tab
    finally:
        context.close()
    assert errors == [], f"JavaScript errors in the console: {errors}"


@pytest.fixture
def amqp(warren: EmbeddedBroker) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A pika channel with publisher confirms, so published messages are queued on return."""
    connection = pika.BlockingConnection(pika.URLParameters(warren.url))
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        yield channel
    finally:
        if connection.is_open:
            connection.close()


def log_in(page: Page, url: str, password: str = "guest") -> None:
    page.goto(url)
    page.get_by_label("Username").fill("guest")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def publish_orders(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> None:
    """Five text messages whose payloads look like markup, which the console must show as text."""
    for n in range(5):
        body = f"order {n} <b>not bold</b>".encode()
        channel.basic_publish("", queue, body, pika.BasicProperties(content_type="text/plain"))


def fact(page: Page, container: str, field: str) -> playwright_sync.Locator:
    return page.locator(f"#{container} [data-field={field}]")


def table_cell(page: Page, row_name: str, column: str) -> playwright_sync.Locator:
    """The `column` cell of the table row whose row header (name) is exactly `row_name`."""
    header = page.locator("th").filter(has_text=re.compile(f"^{re.escape(row_name)}$"))
    return page.locator("tbody tr", has=header).locator(f"[data-col={column}]")


def test_a_wrong_password_is_refused_with_a_message(page: Page, console_url: str) -> None:
    """A 401 from the API keeps the login form up and says why, instead of a browser prompt."""
    log_in(page, console_url, password="not-the-password")
    expect(page.locator("#login-message")).to_contain_text("Login failed")
    expect(page.get_by_role("heading", name="Log in to Warren")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_queue_from_overview_to_purge(
    page: Page,
    console_url: str,
    amqp: pika.adapters.blocking_connection.BlockingChannel,
) -> None:
    """The main path an operator takes: totals, the queue list, then one queue's page, where Get
    shows a payload (escaped, requeued), Publish routes to it, and Purge empties it."""
    queue = unique("console")
    amqp.queue_declare(queue, durable=True)
    publish_orders(amqp, queue)

    log_in(page, console_url)
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    expect(page).to_have_url(re.compile("#/overview$"))
    expect(fact(page, "object-totals", "connections")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(fact(page, "object-totals", "queues")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(fact(page, "queue-totals", "messages_ready")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(fact(page, "message-rates", "publish")).to_have_text(re.compile(r"/s$"))
    if SCREENSHOTS:
        # A few samples with traffic between them, so the charts draw lines.
        chart = page.locator("svg.chart-svg").first
        for samples in range(2, 5):
            for n in range(3 * samples):
                amqp.basic_publish("", queue, f"extra {n}".encode())
            expect(chart).to_have_attribute("data-samples", str(samples))
        page.screenshot(path=str(DOCS / "console-overview.png"))
        amqp.queue_purge(queue)
        publish_orders(amqp, queue)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Queues").click()
    expect(page.get_by_role("heading", name="Queues", level=1)).to_be_visible()
    expect(table_cell(page, queue, "ready")).to_have_text("5")
    expect(table_cell(page, queue, "unacked")).to_have_text("0")
    expect(table_cell(page, queue, "total")).to_have_text("5")
    expect(table_cell(page, queue, "vhost")).to_have_text("/")
    expect(table_cell(page, queue, "type")).to_have_text("classic")
    expect(table_cell(page, queue, "consumers")).to_have_text("0")

    page.get_by_role("link", name=queue, exact=True).click()
    expect(page).to_have_url(re.compile(f"#/queues/%2F/{queue}$"))
    expect(page.get_by_role("heading", name=f"Queue {queue}", level=1)).to_be_visible()
    expect(fact(page, "queue-depth", "ready")).to_have_text("5")
    bindings = page.get_by_role("region", name="Bindings to this queue")
    expect(bindings.get_by_role("link", name="(AMQP default)")).to_be_visible()

    # Get one message and requeue it: the payload shows as text, and nothing is lost.
    page.get_by_label("Ack mode").select_option("ack_requeue_true")
    page.get_by_label("Number of messages").fill("1")
    page.get_by_role("button", name="Get messages").click()
    payload = page.get_by_label("Payload of message 1")
    expect(payload).to_have_text("order 0 <b>not bold</b>")
    assert payload.locator("b").count() == 0, "a payload must never become markup"
    message = page.get_by_role("article", name="Message 1")
    expect(message.locator("[data-field=redelivered]")).to_have_text("no")
    expect(message.locator("[data-field=properties]")).to_contain_text("text/plain")
    expect(fact(page, "queue-depth", "ready")).to_have_text("5")

    # Publish through the default exchange from the form: routed, so the queue grows.
    page.get_by_label("Delivery mode").select_option("2")
    page.get_by_role("textbox", name="Payload").fill("from the console")
    page.get_by_role("button", name="Publish message").click()
    expect(page.locator("#publish-status")).to_have_text("Message published.")
    expect(fact(page, "queue-depth", "ready")).to_have_text("6")
    if SCREENSHOTS:
        expect(page.locator("svg.chart-svg")).to_have_attribute("data-samples", re.compile("[2-9]"))
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(DOCS / "console-queue.png"))

    # Purge asks first; Cancel leaves the messages alone.
    page.get_by_role("button", name="Purge messages").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("button", name="Yes, purge")).to_be_hidden()
    page.get_by_role("button", name="Purge messages").click()
    page.get_by_role("button", name="Yes, purge").click()
    expect(page.locator("#purge-status")).to_contain_text(f"Queue {queue} purged.")
    expect(fact(page, "queue-depth", "ready")).to_have_text("0")
    assert amqp.queue_declare(queue, passive=True).method.message_count == 0

    # Delete, then the queue list no longer has it.
    page.get_by_role("button", name="Delete queue").click()
    page.get_by_role("button", name="Yes, delete").click()
    expect(page).to_have_url(re.compile("#/queues$"))
    expect(page.locator("#status")).to_contain_text(f"Queue {queue} deleted.")
    expect(page.get_by_role("link", name=queue, exact=True)).to_have_count(0)


def test_connections_channels_and_exchanges(
    page: Page, console_url: str, warren: EmbeddedBroker
) -> None:
    """The other listings show what a pika client set up, and Close ends its connection."""
    exchange, queue = unique("console-x"), unique("console-q")
    connection = pika.BlockingConnection(pika.URLParameters(warren.url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=7)
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, "order.#")
        channel.basic_consume(queue, lambda _ch, _method, _props, _body: None)
        connection.process_data_events(time_limit=0)

        log_in(page, console_url)
        expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()

        page.get_by_role("link", name="Channels").click()
        prefetch = page.locator("tbody tr", has_text="(1)").locator("[data-col=prefetch_count]")
        expect(prefetch.filter(has_text=re.compile("^7$"))).to_have_count(1)

        page.get_by_role("link", name="Exchanges").click()
        page.get_by_role("link", name="(AMQP default)").click()
        expect(page.get_by_role("heading", name="Exchange (AMQP default)")).to_be_visible()
        expect(page.locator("[data-field=type]")).to_have_text("direct")
        expect(page.locator("#alert")).to_be_empty()
        page.go_back()
        expect(table_cell(page, exchange, "type")).to_have_text("topic")
        expect(table_cell(page, exchange, "durable")).to_have_text("yes")
        page.get_by_role("link", name=exchange, exact=True).click()
        expect(page.get_by_role("heading", name=f"Exchange {exchange}")).to_be_visible()
        expect(table_cell(page, queue, "routing_key")).to_have_text("order.#")
        page.get_by_label("Routing key").fill("order.new")
        page.get_by_role("textbox", name="Payload").fill("routed")
        page.get_by_role("button", name="Publish message").click()
        expect(page.locator("#publish-status")).to_have_text("Message published.")
        page.get_by_label("Routing key").fill("invoice.new")
        page.get_by_role("button", name="Publish message").click()
        expect(page.locator("#publish-status")).to_have_text("Message published, but not routed.")

        page.get_by_role("link", name="Connections").click()
        rows = page.locator("tbody tr")
        expect(rows.first).to_be_visible()
        expect(rows.first.locator("[data-col=protocol]")).to_have_text(re.compile("AMQP 0-9-1"))
        expect(rows.first.locator("[data-col=connected_at] time")).to_have_text(
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        )
        count = rows.count()
        rows.first.get_by_role("button", name=re.compile("^Close connection")).click()
        rows.first.get_by_role("button", name=re.compile("^Confirm closing")).click()
        expect(page.locator("#status")).to_contain_text("closed")
        expect(rows).to_have_count(count - 1)
    finally:
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()


def test_a_refused_session_and_log_out_return_to_the_login_form(
    page: Page, console_url: str
) -> None:
    """Stored credentials the API stops accepting (a 401 on a refresh) end the session."""
    log_in(page, console_url)
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to Warren")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0

    page.evaluate(
        """sessionStorage.setItem("warren.console.auth",
            JSON.stringify({user: "guest", token: btoa("guest:stale")}))"""
    )
    page.goto(console_url + "#/queues")
    expect(page.locator("#login-message")).to_contain_text("refused your credentials")
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()


def test_errors_show_in_the_alert_region_and_narrow_windows_fit(
    page: Page, console_url: str
) -> None:
    """An API error (a missing queue) is visible in role=alert; at 800 px wide the page does
    not scroll sideways (wide tables scroll inside their own region)."""
    page.set_viewport_size({"width": 800, "height": 800})
    log_in(page, console_url)
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    page.goto(console_url + "#/queues/%2F/" + unique("missing"))
    alert = page.locator("#alert")
    expect(alert).to_have_attribute("role", "alert")
    expect(alert).to_contain_text("404")
    for route in ("#/overview", "#/queues", "#/exchanges", "#/connections", "#/channels"):
        page.goto(console_url + route)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 800, route
