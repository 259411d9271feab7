"""What a running flow is doing: the current step, a bar per disk with
rate, ETA and what was spared, and the log. A lost link shows as
"reconnecting" until bytes move again (the engine resumes by itself).

Nothing on this screen changes height while a flow runs (the disk area
holds three disks and scrolls beyond): Textual 8 left the log drawn at its
old place on a real terminal when a new disk bar pushed it down (seen in
tmux with TERM=linux), until something else redrew it."""

from __future__ import annotations

import logging

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static

from converters.events import LinkLost, Log, Progress, Step
from tui.flows import Cancelled, Flow
from tui.messages import FlowEnded, FlowEvent
from tui.widgets.progress import DiskProgress
from tui.widgets.titlebar import TitleBar

log = logging.getLogger(__name__)


class ProgressScreen(Screen):
    DEFAULT_CSS = """
    ProgressScreen #title { text-style: bold; padding: 0 1; }
    ProgressScreen #step { padding: 0 1; }
    ProgressScreen #link { padding: 0 1; height: 1; }
    ProgressScreen #link.-lost { text-style: bold reverse; }
    ProgressScreen #disks { height: 6; padding: 0 1; }
    ProgressScreen RichLog { height: 1fr; border: round $primary; }
    """
    BINDINGS = [Binding("c", "cancel", "Cancel")]

    step = reactive("starting")
    reconnecting = reactive(False)

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow
        self.reconnects = 0  # outages seen (tests read it)
        self.stopping = False
        self._done: dict[str, int] = {}
        self._worker = None

    def compose(self) -> ComposeResult:
        yield TitleBar(self.flow.kind)
        yield Static(self.flow.title, id="title")
        yield Static("", id="step")
        yield Static("", id="link")
        yield VerticalScroll(id="disks", can_focus=False)
        yield RichLog(wrap=True, markup=False, max_lines=2000, min_width=40)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RichLog).border_title = "Log"
        self._worker = self.run_flow()

    def watch_step(self, step: str) -> None:
        self.query_one("#step", Static).update(f"Step: {step}")

    def watch_reconnecting(self, lost: bool) -> None:
        link = self.query_one("#link", Static)
        link.set_class(lost, "-lost")
        text = " Link lost: reconnecting, the transfer resumes by itself "
        link.update(text if lost else "")

    # The worker and its listener run in threads.

    @work(thread=True, exclusive=True, group="flow")
    def run_flow(self) -> None:
        from converters.events import EventStream

        events = EventStream()
        events.subscribe(self._listen)
        try:
            outcome = self.flow.run(events)
        except Exception as e:
            log.info("FLOW failed kind=%s error=%r", self.flow.kind, e)
            outcome = self.flow.failed(e)
        self.post_message(FlowEnded(outcome))

    def _listen(self, event) -> None:
        # Before the uploader runs (inventory, maps), an engine call cannot
        # be interrupted from outside: the next event it emits raises, and
        # the engine unwinds as on any error. The uploader stops itself on
        # the flow's cancel signal (the server keeps what it committed, so
        # a retry resumes).
        cancelled = self._worker and self._worker.is_cancelled
        if (self.stopping and not self.flow.stops_itself) or cancelled:
            raise Cancelled()
        self.post_message(FlowEvent(event))

    @on(FlowEvent)
    def _event(self, message: FlowEvent) -> None:
        event = message.event
        if isinstance(event, Progress):
            self._progress(event)
            return
        if isinstance(event, Step):
            line = f"{event.name}: {event.detail}" if event.detail else event.name
            self.step = line
            self._write(f"== {line}")
        elif isinstance(event, Log):
            prefix = "" if event.level == "info" else f"{event.level}: "
            self._write(prefix + event.message)
        elif isinstance(event, LinkLost):
            # Once per outage, from the wire's backoff; bytes moving again
            # (in _progress) end it.
            self.reconnects += 1
            self.reconnecting = True

    def _progress(self, p: Progress) -> None:
        try:
            bar = self.query_one(f"#disk-{p.disk}", DiskProgress)
        except NoMatches:
            self.query_one("#disks").mount(DiskProgress(p.disk, p, id=f"disk-{p.disk}"))
        else:
            bar.show(p)
        if p.done > self._done.get(p.disk, -1) and p.disk in self._done:
            self.reconnecting = False
        self._done[p.disk] = p.done

    def _write(self, line: str) -> None:
        self.query_one(RichLog).write(line)
        self.app.record(line)

    @on(FlowEnded)
    def _ended(self, message: FlowEnded) -> None:
        # A question left open (cancel?) has no subject any more.
        while self.app.screen is not self and len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        self.app.show_outcome(message.outcome, replace=True)

    def action_cancel(self) -> None:
        from tui.screens.confirm import ConfirmModal

        def answer(yes: bool | None) -> None:
            if yes:
                self.stopping = True
                self.flow.cancel()
                self.step = "stopping..."

        kind = self.flow.kind
        self.app.push_screen(
            ConfirmModal(f"Stop the {kind}? Retrying later resumes it.", yes="Stop"),
            answer,
        )
