"""The server field: the pairing string ``ferry serve`` printed, and the
result of testing it (the certificate fingerprint the client will pin)."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Input, Label

from tui.connect import ServerInfo, check_server, explain
from tui.fmt import size
from tui.messages import ConnectionTested

PLACEHOLDER = "ferry://HOST:PORT/?fp=...&token=...  (printed by ferry serve)"


def describe(server: ServerInfo) -> str:
    fp = server.fingerprint
    return (
        f"OK: ferry serve {server.version} at {server.address}, "
        f"{size(server.free_bytes)} free; certificate {fp[:8]} {fp[8:16]} "
        f"{fp[16:24]} {fp[24:32]}..."
    )


class ServerField(Widget):
    DEFAULT_CSS = """
    ServerField { height: auto; }
    ServerField Input { width: 1fr; }
    ServerField .status { padding-left: 1; height: auto; }
    ServerField .status.-error { text-style: bold; color: $error; }
    """

    def compose(self) -> ComposeResult:
        yield Input(
            self.app.pairing_text,
            placeholder=PLACEHOLDER,
            compact=True,
            id="pairing",
        )
        yield Label("not tested yet", classes="status")

    @property
    def text(self) -> str:
        return self.query_one(Input).value.strip()

    @on(Input.Changed, "#pairing")
    def remember(self, event: Input.Changed) -> None:
        # One server for the whole session: Network, P2V and V2P share it.
        self.app.pairing_text = event.value.strip()

    def test(self) -> None:
        if not self.text:
            self.set_status("Enter the pairing string first.", error=True)
            return
        self.set_status(f"testing {self.text[:48]}...")
        self._test(self.text)

    @work(thread=True, exclusive=True, group="connect")
    def _test(self, text: str) -> None:
        try:
            server = check_server(text)
        except Exception as e:  # every failure is shown, none is fatal
            self.post_message(ConnectionTested(None, explain(e, text)))
        else:
            self.post_message(ConnectionTested(server))

    @on(ConnectionTested)
    def _show(self, event: ConnectionTested) -> None:
        # The message goes on to the screen (bubbles) after this.
        if event.server:
            self.set_status(describe(event.server))
        else:
            self.set_status(event.error, error=True)

    def set_status(self, text: str, error: bool = False) -> None:
        label = self.query_one(".status", Label)
        label.update(text)
        label.set_class(error, "-error")
