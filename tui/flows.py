"""The flows the progress screen runs: each one engine call (the same the
CLI makes) plus the sentence that says how it ended.

A flow runs in a worker thread and reports through the engine's event
stream. It knows whether it had started writing when it failed, so that
the failed screen can say "nothing was written" only when that is true.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field

from converters.events import Event, EventStream, Step
from tui import fmt
from tui.connect import address_of, check_server, explain
from tui.deploy_link import NOT_AVAILABLE, DeployUnavailable, Image, Mapping


class Cancelled(Exception):
    """The technician stopped the flow (raised from the event listener, the
    only place an engine call can be interrupted)."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    title: str
    sentence: str  # what happened, one sentence
    where: str = ""  # where the result is
    retry: Flow | None = None  # the same flow again (resumes a capture)
    # P2V: (pairing string, session) whose conversion the server reports
    conversion: tuple[str, str] | None = None
    # V2P with a first-boot report armed: (pairing string, image name), for
    # the view of the server's reports of that image.
    reports: tuple[str, str] | None = None


class Flow:
    kind = "flow"
    title = ""

    def run(self, events: EventStream) -> Outcome:
        raise NotImplementedError

    def failed(self, err: BaseException) -> Outcome:
        raise NotImplementedError

    def cancel(self) -> None:
        """Ask the engine to stop (engines without a cancel signal stop at
        their next event, where the progress screen's listener raises)."""

    @property
    def stops_itself(self) -> bool:
        """The engine call now running honours cancel() by itself."""
        return False


@dataclass
class P2VFlow(Flow):
    """Cold capture of the chosen disks into a session on ferry serve."""

    request: object  # converters.capture.CaptureRequest
    # Unattended: the servers of the kernel keys, tried in order until one
    # answers (converters.unattended.choose_server); empty: request.server.
    servers: list = field(default_factory=list)
    sending: bool = field(default=False, init=False)
    # The uploader checks it between chunks (and between retries while the
    # link is down), so a cancel stops the workers, not only the events.
    stop: threading.Event = field(default_factory=threading.Event, init=False)
    kind = "P2V capture"

    def __post_init__(self) -> None:
        # The session name decides resume: fix it now, as capture would.
        if not self.request.name:
            self.request.name = os.uname().nodename or "capture"

    @property
    def address(self) -> str:
        return address_of(self.request.server)

    @property
    def title(self) -> str:
        return f"P2V capture to {self.address}, VM {self.request.name}"

    def cancel(self) -> None:
        self.stop.set()

    @property
    def stops_itself(self) -> bool:
        return self.sending  # the uploader runs from the session step on

    def _watch(self, event: Event) -> None:
        # The uploader announces the session before it creates it.
        if isinstance(event, Step) and event.name == "session":
            self.sending = True

    def run(self, events: EventStream) -> Outcome:
        from converters.capture import capture

        started = time.monotonic()
        if self.servers:
            from converters.unattended import choose_server

            self.request.server = str(choose_server(self.servers, _Lines(events)))
        events.step("connect", self.address)
        # Fails in seconds on a wrong secret or address, where the
        # capture's own retries would wait for a server that went away.
        server = check_server(self.request.server)
        events.log(
            f"connected to ferry serve {server.version} at {server.address}, "
            f"certificate {server.fingerprint[:16]}..., "
            f"{fmt.size(server.free_bytes)} free"
        )
        events.subscribe(self._watch)
        # This run's own signal: a retry is a new flow with a clear one.
        self.request.options = dataclasses.replace(
            self.request.options, cancel=self.stop
        )
        result = capture(self.request, events)
        disks = ", ".join(result.disks) or "no disks"
        return Outcome(
            ok=True,
            title="Capture complete",
            sentence=(
                f"Captured {disks} into session {result.session} on "
                f"{self.address} in {fmt.duration(time.monotonic() - started)}."
            ),
            where=f"VM {result.session} on the KVM host {self.address}",
            conversion=(self.request.server, result.session),
        )

    def failed(self, err: BaseException) -> Outcome:
        again = P2VFlow(self.request, self.servers)
        if isinstance(err, Cancelled) or self.stop.is_set():
            sentence = (
                "The capture was stopped: retry resumes it where it stopped."
                if self.sending
                else "The capture was stopped before anything was sent."
            )
            return Outcome(False, "Capture stopped", sentence, self._where(), again)
        prefix = (
            "The capture failed: " if self.sending else "The capture cannot start: "
        )
        text = explain(err, self.request.server, prefix)
        if self.sending:
            text += " The server keeps what it received: retry resumes."
        else:
            text += " Nothing was sent or written."
        return Outcome(False, "Capture failed", text, self._where(), again)

    def _where(self) -> str:
        if not self.sending:
            return "nothing was written on the server"
        return f"session {self.request.name} on {self.address}, incomplete"


class _Lines:
    """converters.unattended's console, as log lines of the flow."""

    def __init__(self, events: EventStream) -> None:
        self.events = events

    def line(self, text: str) -> None:
        self.events.log(text)


def deployed(sentence: str, targets: str, result, server: str, image: str):
    """The Done outcome of a deploy; with its first-boot report armed, the
    sentence says where the machine will report and the outcome can show
    the server's reports of the image."""
    fixups = getattr(result, "fixups", None)
    armed = getattr(fixups, "first_boot", None)
    if armed is None:
        return Outcome(
            True, "Deploy complete", sentence, f"disk {targets} of this machine"
        )
    sentence += (
        f" On its first boot {armed.hostname} will report to ferry serve at "
        f"{armed.server} (p shows the reports of {image})."
    )
    where = f"disk {targets} of this machine"
    return Outcome(True, "Deploy complete", sentence, where, reports=(server, image))


@dataclass
class V2PFlow(Flow):
    """An image from the server (or a file) onto this machine's disks."""

    image: Image
    mappings: list[Mapping]
    confirm: list[str]
    hostname: str = ""
    writing: bool = field(default=False, init=False)
    kind = "V2P deploy"

    @property
    def targets(self) -> str:
        return ", ".join(m.target.name for m in self.mappings)

    @property
    def title(self) -> str:
        return f"V2P deploy of {self.image.name} to {self.targets}"

    def run(self, events: EventStream) -> Outcome:
        from tui import deploy_link

        events.step("plan", f"{self.image.name} onto {self.targets}")
        req = deploy_link.request(
            self.image, self.mappings, self.confirm, self.hostname
        )
        deploy_link.plan(req)
        self.writing = True
        result = deploy_link.start(req, events)
        return deployed(
            f"Wrote image {self.image.name} to {self.targets}.",
            self.targets,
            result,
            self.image.source,
            self.image.name,
        )

    def failed(self, err: BaseException) -> Outcome:
        if isinstance(err, DeployUnavailable):
            return Outcome(
                False,
                "V2P not available",
                f"{NOT_AVAILABLE}: nothing was written to {self.targets}.",
                where="no disk was touched",
            )
        if not self.writing:
            return Outcome(
                False,
                "Cannot deploy",
                explain(err, self.image.source, "The deploy cannot start: ")
                + f" Nothing was written to {self.targets}.",
                where="no disk was touched",
            )
        return Outcome(
            False,
            "Deploy failed",
            explain(err, self.image.source, "The deploy failed: "),
            where=f"disk {self.targets} is partly written",
            retry=V2PFlow(self.image, self.mappings, self.confirm, self.hostname),
        )


@dataclass
class UnattendedV2PFlow(Flow):
    """ferry.mode=v2p on the screens: the image, the disks and their
    confirmation come from the kernel keys (converters.unattended), the
    checks and the write from converters.deploy, as in the plain-line run."""

    boot: object  # converters.kernel_cmdline.BootKeys
    writing: bool = field(default=False, init=False)
    kind = "V2P deploy"

    @property
    def targets(self) -> str:
        return ", ".join(self.boot.target)

    @property
    def title(self) -> str:
        return f"V2P deploy of {self.boot.image} to {self.targets}"

    def run(self, events: EventStream) -> Outcome:
        from converters import deploy as engine
        from converters.unattended import v2p_request

        request = v2p_request(self.boot, _Lines(events))
        events.step("plan", f"{self.boot.image} onto {self.targets}")
        engine.plan_deploy(request)  # every refusal before a byte is written
        self.writing = True
        result = engine.deploy(request, events)
        return deployed(
            f"Wrote image {self.boot.image} to {self.targets} and made it boot "
            "on this machine.",
            self.targets,
            result,
            request.image.server,
            request.image.name,
        )

    def failed(self, err: BaseException) -> Outcome:
        again = UnattendedV2PFlow(self.boot)
        server = str(self.boot.servers[0]) if self.boot.servers else ""
        if not self.writing:
            return Outcome(
                False,
                "Cannot deploy",
                explain(err, server, "The deploy cannot start: ")
                + f" Nothing was written to {self.targets}.",
                where="no disk was touched",
                retry=again,
            )
        return Outcome(
            False,
            "Deploy failed",
            explain(err, server, "The deploy failed: "),
            where=f"disk {self.targets}",
            retry=again,
        )
