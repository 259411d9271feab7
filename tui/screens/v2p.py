"""V2P: an image from the server (or an image file on a USB stick), each of
its disks mapped to a disk of this machine with a size check, then the
destructive confirmation. The deploy itself is converters.deploy's."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from converters.inventory import Disk, Machine
from tui import fmt
from tui.deploy_link import Image, ImageDisk, Mapping
from tui.messages import ImagesListed
from tui.widgets.disks import label
from tui.widgets.picker import ChoiceList
from tui.widgets.server import ServerField
from tui.widgets.titlebar import TitleBar


def fit_text(need: ImageDisk, disk: Disk | None) -> str:
    if disk is None:
        return ""
    if disk.size < need.size:
        return f"TOO SMALL by {fmt.size(need.size - disk.size)}"
    return f"fits, {fmt.size(disk.size - need.size)} to spare"


class V2PScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+l", "list_images", "List images"),
        Binding("ctrl+o", "open_file", "Open file"),
        Binding("ctrl+g", "next", "Continue"),
    ]
    DEFAULT_CSS = """
    V2PScreen #images { height: auto; max-height: 4; margin: 0 1; }
    V2PScreen #mapping { height: auto; }
    V2PScreen .map-row { height: 1; margin: 0 1; }
    V2PScreen .map-row .need { width: 24; }
    V2PScreen .map-row Select { width: 30; }
    V2PScreen .map-row .fit { width: 1fr; padding-left: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.images: list[Image] = []
        self.image: Image | None = None

    def compose(self) -> ComposeResult:
        yield TitleBar("V2P: write a VM image onto this machine")
        yield Label("Image from the server (ctrl+l lists them)", classes="field-label")
        yield ServerField()
        yield Input(
            placeholder="or an image file or URL: /media/usb/web01.qcow2, then ctrl+o",
            id="file",
            compact=True,
        )
        yield ChoiceList(id="images", compact=True)
        yield Label(
            "Target disks (the boot medium is not offered)", classes="field-label"
        )
        yield Vertical(Static("Choose an image first.", classes="hint"), id="mapping")
        yield Input(
            placeholder="hostname for the machine (optional)",
            id="hostname",
            compact=True,
        )
        yield Static("", id="problem", classes="problem")
        yield Footer()

    def problem(self, text: str) -> None:
        self.query_one("#problem", Static).update(text)

    # Finding the image.

    def action_list_images(self) -> None:
        server = self.query_one(ServerField)
        if not server.text:
            self.problem("Enter the pairing string first.")
            return
        self.problem("Asking the server for its images...")
        self._list(server.text)

    def action_open_file(self) -> None:
        path = self.query_one("#file", Input).value.strip()
        if not path:
            self.problem("Type the image file's path first.")
            return
        self.problem(f"Reading {path}...")
        self._open(path)

    @work(thread=True, exclusive=True, group="images")
    def _list(self, server: str) -> None:
        from tui.connect import explain
        from tui.deploy_link import DeployUnavailable, list_images

        try:
            self.post_message(ImagesListed(list_images(server)))
        except DeployUnavailable as e:
            self.post_message(ImagesListed([], f"{e}."))
        except Exception as e:
            self.post_message(ImagesListed([], explain(e, server)))

    @work(thread=True, exclusive=True, group="images")
    def _open(self, path: str) -> None:
        from tui.deploy_link import image_file

        try:
            self.post_message(ImagesListed([image_file(path)]))
        except (OSError, ValueError) as e:
            self.post_message(ImagesListed([], f"{e}."))

    @on(ImagesListed)
    def _listed(self, event: ImagesListed) -> None:
        self.problem(event.error)
        if event.error:
            return
        self.images = event.images
        options = self.query_one("#images", OptionList)
        options.clear_options()
        for i, image in enumerate(event.images):
            sizes = ", ".join(fmt.size(d.size) for d in image.disks)
            options.add_option(
                Option(f"{image.name}  ({sizes})  {image.source}", id=str(i))
            )
        if event.images:
            options.highlighted = 0
            self._choose(event.images[0])

    @on(OptionList.OptionHighlighted, "#images")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None and self.images:
            self._choose(self.images[int(event.option.id)])

    # Mapping image disks to this machine's disks.

    def _targets(self) -> list[Disk]:
        machine: Machine | None = self.app.machine
        return [d for d in machine.disks if not d.boot_medium] if machine else []

    def _choose(self, image: Image) -> None:
        if image == self.image:
            return
        self.image = image
        mapping = self.query_one("#mapping", Vertical)
        mapping.remove_children()
        options = [(label(d), d.name) for d in self._targets()]
        rows = []
        for i, need in enumerate(image.disks):
            rows.append(
                Horizontal(
                    Label(f"{need.name} {fmt.size(need.size)} ->", classes="need"),
                    Select(
                        options,
                        prompt="choose a target disk",
                        id=f"target-{i}",
                        compact=True,
                    ),
                    Label("", classes="fit", id=f"fit-{i}"),
                    classes="map-row",
                )
            )
        mapping.mount_all(rows)

    def _disk(self, name) -> Disk | None:
        return next((d for d in self._targets() if d.name == name), None)

    @on(Select.Changed)
    def _target_changed(self, event: Select.Changed) -> None:
        if self.image is None or not (event.select.id or "").startswith("target-"):
            return
        i = int(event.select.id.split("-")[1])
        disk = self._disk(event.value)
        self.query_one(f"#fit-{i}", Label).update(fit_text(self.image.disks[i], disk))

    def mappings(self) -> list[Mapping] | None:
        out = []
        for i, need in enumerate(self.image.disks):
            disk = self._disk(self.query_one(f"#target-{i}", Select).value)
            if disk is None:
                self.problem(f"Choose a target disk for image disk {need.name}.")
                return None
            out.append(Mapping(need, disk))
        return out

    # On to the confirmation.

    def action_next(self) -> None:
        from tui.deploy_link import problems
        from tui.flows import Outcome

        if self.image is None:
            self.problem(
                "Choose an image: ctrl+l lists the server's, ctrl+o opens a file."
            )
            return
        mappings = self.mappings()
        if mappings is None:
            return
        found = problems(mappings)
        if found:
            self.app.show_outcome(
                Outcome(
                    False,
                    "Cannot deploy",
                    " ".join(found) + " Nothing was written.",
                    where="no disk was touched",
                )
            )
            return
        self.problem("")
        from tui.screens.erase import EraseModal

        self.app.push_screen(EraseModal(self.image, mappings), self._confirmed)

    def _confirmed(self, confirm: list[str] | None) -> None:
        from tui import deploy_link
        from tui.flows import V2PFlow

        if not confirm:
            self.problem("Not confirmed: nothing was written.")
            return
        hostname = self.query_one("#hostname", Input).value.strip()
        flow = V2PFlow(self.image, self.mappings() or [], confirm, hostname)
        if deploy_link.available():
            self.app.run_flow(flow)
        else:
            failure = deploy_link.DeployUnavailable(deploy_link.NOT_AVAILABLE)
            self.app.show_outcome(flow.failed(failure))
