"""The `tutorial` command: ten short lessons from creating a VM to sharing it and cleaning up.

Each lesson checks that the user really did its step. Most checks read the state of the platform:
the VM exists, has a tag, serves port 8080, has a copy, is shared. Steps that change nothing are
checked in the log of commands the user ran since the lesson began. Progress is stored per user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.render import Style
from ussycode.config import format_size
from ussycode.errors import InvalidInput, UssycodeError
from ussycode.store import VM
from ussycode.store.db import utc_now
from ussycode.store.history import HistoryStore
from ussycode.store.sharing import Sharing
from ussycode.store.tutorial import TutorialProgress, TutorialStore
from ussycode.vm.state import VMState

log = logging.getLogger(__name__)

APP_PORT = 8080
PORT_CHECK_SECONDS = 3.0


@dataclass(frozen=True)
class Check:
    """The outcome of a lesson's check: `passed`, and what is missing if not."""

    passed: bool
    missing: str = ""


Checker = Callable[["LessonContext"], Awaitable[Check]]


@dataclass
class LessonContext:
    """The inputs of a lesson's check and text: the command context and the user's progress."""

    ctx: CommandContext
    progress: TutorialProgress

    def vm(self) -> VM | None:
        """Return the user's tutorial VM, chosen in lesson 1, if it still exists and is theirs."""
        vm_id = self.progress.context.get("vm_id")
        if not isinstance(vm_id, int):
            return None
        with contextlib.suppress(UssycodeError):
            vm = self.ctx.services.store.get_vm(vm_id)
            if vm.owner_id == self.ctx.user.id:
                return vm
        return None

    def vm_name(self) -> str:
        vm = self.vm()
        return vm.name if vm is not None else "VM"

    def ran(self, command: str) -> bool:
        return HistoryStore(self.ctx.services.store).ran_since(
            self.ctx.user.id, command, self.progress.lesson_started_at
        )


@dataclass(frozen=True)
class Lesson:
    title: str
    text: str  # may contain {vm}, {domain}, {ssh}, {bigger} and {copy}
    check: Checker
    # Cheap checks run after every REPL command, so that finishing a step is noticed at once.
    cheap: bool = True


def _missing_vm(lesson: LessonContext) -> Check:
    return Check(False, 'your tutorial VM is gone: run "tutorial --lesson 1" to make a new one')


async def _check_created(lesson: LessonContext) -> Check:
    """Pass once the user has a running VM; the newest one that is not a copy becomes the tutorial's."""
    vms = lesson.ctx.services.store.list_vms(owner_id=lesson.ctx.user.id)
    running = [vm for vm in vms if vm.state == VMState.RUNNING]
    if not running:
        return Check(False, 'you have no running VM yet: run "new"')
    details = lesson.ctx.services.manager.details
    originals = [vm for vm in running if details.get(vm.id).copied_from is None]
    lesson.progress.context["vm_id"] = (originals or running)[-1].id
    return Check(True)


async def _check_listed(lesson: LessonContext) -> Check:
    if lesson.vm() is None:
        return _missing_vm(lesson)
    return Check(True) if lesson.ran("ls") else Check(False, 'run "ls -l"')


async def _guest_succeeds(lesson: LessonContext, command: str) -> bool:
    vm = lesson.vm()
    if vm is None or vm.state != VMState.RUNNING:
        return False
    try:
        conn = await lesson.ctx.services.manager.connect_guest(vm, timeout=5.0)
        async with conn:
            result = await asyncio.wait_for(conn.run(command, check=False), 10)
    except (UssycodeError, OSError, TimeoutError, asyncssh.Error) as exc:
        log.info("vm=%s tutorial check failed to run: %s", vm.name, exc)
        return False
    return result.exit_status == 0


async def _check_shell(lesson: LessonContext) -> Check:
    if lesson.vm() is None:
        return _missing_vm(lesson)
    if await _guest_succeeds(lesson, "test -s ~/hello.txt"):
        return Check(True)
    return Check(False, f"~/hello.txt in {lesson.vm_name()} is missing or empty")


async def _check_serving(lesson: LessonContext) -> Check:
    vm = lesson.vm()
    if vm is None:
        return _missing_vm(lesson)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(vm.ip, APP_PORT), PORT_CHECK_SECONDS)
    except (OSError, TimeoutError):
        return Check(False, f"nothing answers on port {APP_PORT} in {vm.name} yet")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check(True)


async def _check_labelled(lesson: LessonContext) -> Check:
    vm = lesson.vm()
    if vm is None:
        return _missing_vm(lesson)
    details = lesson.ctx.services.manager.details.get(vm.id)
    if not details.tags:
        return Check(False, f'{vm.name} has no tag yet: "tag {vm.name} tutorial"')
    if not details.comment:
        return Check(False, f'{vm.name} has no comment yet: "comment {vm.name} my first VM"')
    return Check(True)


async def _check_watched(lesson: LessonContext) -> Check:
    if lesson.vm() is None:
        return _missing_vm(lesson)
    missing = [command for command in ("stat", "vm-logs") if not lesson.ran(command)]
    if missing:
        commands = " and ".join(f'"{command} {lesson.vm_name()}"' for command in missing)
        return Check(False, f"{commands} not run yet")
    return Check(True)


async def _check_grown(lesson: LessonContext) -> Check:
    vm = lesson.vm()
    if vm is None:
        return _missing_vm(lesson)
    before = lesson.progress.context.setdefault("disk_bytes", vm.disk_bytes)
    if isinstance(before, int) and vm.disk_bytes > before:
        return Check(True)
    return Check(False, f"the disk of {vm.name} is still {format_size(vm.disk_bytes)}")


async def _check_copied(lesson: LessonContext) -> Check:
    vm = lesson.vm()
    if vm is None:
        return _missing_vm(lesson)
    manager = lesson.ctx.services.manager
    for candidate in lesson.ctx.services.store.list_vms(owner_id=lesson.ctx.user.id):
        if manager.details.get(candidate.id).copied_from == vm.name and candidate.state == VMState.RUNNING:
            lesson.progress.context["copy_id"] = candidate.id
            lesson.progress.context["copy_name"] = candidate.name
            return Check(True)
    return Check(False, f'{vm.name} has no running copy yet: "cp {vm.name}"')


async def _check_shared(lesson: LessonContext) -> Check:
    vm = lesson.vm()
    if vm is None:
        return _missing_vm(lesson)
    sharing = Sharing(lesson.ctx.services.store)
    if sharing.settings(vm.id).public or sharing.shares(vm.id) or sharing.links(vm.id):
        return Check(True)
    return Check(False, f"{vm.name} is not shared with anyone yet")


async def _check_cleaned(lesson: LessonContext) -> Check:
    copy_id = lesson.progress.context.get("copy_id")
    if not isinstance(copy_id, int):
        return Check(False, 'the tutorial has no copy on record: run "tutorial --lesson 8"')
    store = lesson.ctx.services.store
    if any(vm.id == copy_id for vm in store.list_vms(owner_id=lesson.ctx.user.id)):
        name = lesson.progress.context.get("copy_name", "the copy")
        return Check(False, f'the copy {name} still exists: "rm {name}"')
    return Check(True)


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        "Create a VM",
        "A VM is a Linux machine with its own disk, a shell and an HTTPS URL. Create one and wait "
        "until it runs (about a minute):\n\n  new --name my-first-vm\n\n"
        "Any name works: lowercase letters, digits and dashes.",
        _check_created,
    ),
    Lesson(
        "List your VMs",
        "ls shows your VMs and their URLs; -l adds resources, uptime, tags and comments:\n\n  ls -l",
        _check_listed,
    ),
    Lesson(
        "Open a shell in it",
        "Log in to {vm} and leave a file in your home directory:\n\n"
        "  ssh {vm}                      (here in the REPL)\n"
        "  {ssh}        (or from your own terminal)\n"
        "  echo hello > ~/hello.txt\n  exit",
        _check_shell,
        cheap=False,
    ),
    Lesson(
        "Serve a web page",
        "Whatever listens on port 8080 in the VM is served at its HTTPS URL. Start a web server "
        "that keeps running after you log out:\n\n"
        "  ssh {vm} 'setsid -f python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1'\n\n"
        'Then open https://{vm}.{domain}/ (private to you: run "browser" to sign your browser in).',
        _check_serving,
        cheap=False,
    ),
    Lesson(
        "Tag it and add a comment",
        "Tags and comments help once you have many VMs; ls -l shows them and ls --tag filters:\n\n"
        "  tag {vm} tutorial\n  comment {vm} my first VM",
        _check_labelled,
    ),
    Lesson(
        "Watch it work",
        "stat shows CPU, memory, disk and network use with a chart of the last hour, and vm-logs the "
        "console and boot log:\n\n  stat {vm}\n  vm-logs {vm}",
        _check_watched,
    ),
    Lesson(
        "Give it more disk",
        "Disks grow while the VM runs, and so does its filesystem. CPU and memory changes apply at "
        "the next start. Grow the disk by a gigabyte or more:\n\n  resize {vm} --disk {bigger}",
        _check_grown,
    ),
    Lesson(
        "Copy it",
        "cp makes a copy-on-write copy: the same files, but its own name, address and SSH host "
        "keys. It takes about as long as booting, whatever the disk's size:\n\n  cp {vm}",
        _check_copied,
    ),
    Lesson(
        "Share it",
        "Your VM's URL is private. Share it with a person, with a link, or with everyone:\n\n"
        "  share add-link {vm}\n  share add {vm} HANDLE\n  share set-public {vm}\n\n"
        "doc sharing explains the options.",
        _check_shared,
    ),
    Lesson(
        "Clean up",
        "Remove the copy you made in lesson 8 (rm asks you to type its name):\n\n  rm {copy}\n\n"
        "That is the tutorial. doc lists the documentation, and help every command.",
        _check_cleaned,
    ),
)


def _lesson_text(lesson: LessonContext, number: int, style: Style) -> str:
    config = lesson.ctx.services.config
    vm = lesson.vm()
    current_disk = vm.disk_bytes if vm is not None else 0
    values = {
        "vm": lesson.vm_name(),
        "domain": config.domain,
        "ssh": config.ssh_command(lesson.vm_name()),
        "bigger": format_size(current_disk + 1024**3) if current_disk else "20G",
        "copy": str(lesson.progress.context.get("copy_name", "COPY")),
    }
    width = min(style.width or 80, 100)
    paragraphs = []
    for paragraph in LESSONS[number - 1].text.format(**values).split("\n\n"):
        if paragraph.startswith("  "):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(textwrap.fill(paragraph, width, break_on_hyphens=False, break_long_words=False))
    body = "\n\n".join(paragraphs)
    heading = style.paint(f"Lesson {number} of {len(LESSONS)}: {LESSONS[number - 1].title}", "bold")
    footer = textwrap.fill('Run "tutorial" again when you have done it; it checks your work.', width)
    return f"{heading}\n\n{body}\n\n{footer}"


def _store(ctx: CommandContext) -> TutorialStore:
    return TutorialStore(ctx.services.store)


def _begin(progress: TutorialProgress, number: int) -> TutorialProgress:
    context = dict(progress.context)
    if number == 7:
        context.pop("disk_bytes", None)
    return TutorialProgress(progress.user_id, number, progress.completed, context, utc_now())


async def _prepare(lesson: LessonContext) -> None:
    """Record what a lesson compares against when it begins (the disk size for lesson 7)."""
    if lesson.progress.current == 7:
        vm = lesson.vm()
        if vm is not None:
            lesson.progress.context.setdefault("disk_bytes", vm.disk_bytes)


def _tutorial_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--reset", action="store_true", help="forget your progress and start at lesson 1")
    parser.add_argument("--lesson", metavar="N", type=int, help=f"go to lesson N, 1 to {len(LESSONS)}")


async def tutorial(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    store = _store(ctx)
    style = Style.of(ctx)
    if args.reset:
        store.reset(ctx.user.id)
    if args.lesson is not None and not 1 <= args.lesson <= len(LESSONS):
        raise InvalidInput(f"invalid --lesson {args.lesson}: choose 1 to {len(LESSONS)}")
    progress = store.get(ctx.user.id) or TutorialProgress(ctx.user.id, lesson_started_at=utc_now())
    lines: list[str] = []
    if args.reset or args.lesson is not None or store.get(ctx.user.id) is None:
        progress = await _start_lesson(ctx, _begin(progress, args.lesson or 1))
    elif progress.current <= len(LESSONS):
        lesson = LessonContext(ctx, progress)
        check = await LESSONS[progress.current - 1].check(lesson)
        if check.passed:
            title = LESSONS[progress.current - 1].title
            lines += [style.paint(f"✓ Lesson {progress.current} done: {title}.", "green"), ""]
            progress = await _start_lesson(ctx, _advance(lesson.progress))
        else:
            lines += [style.paint(f"Not done yet: {check.missing}.", "yellow"), ""]
            progress = store.save(lesson.progress)
    lesson = LessonContext(ctx, progress)
    if progress.current > len(LESSONS):
        lines.append(f'You finished all {len(LESSONS)} lessons. Run "tutorial --reset" to do them again.')
        text = None
    else:
        text = _lesson_text(lesson, progress.current, Style(color=False))
        lines.append(_lesson_text(lesson, progress.current, style))
    data: dict[str, Any] = {
        "lesson": min(progress.current, len(LESSONS)),
        "finished": progress.current > len(LESSONS),
        "title": LESSONS[min(progress.current, len(LESSONS)) - 1].title,
        "text": text,
        "completed": list(progress.completed),
        "total": len(LESSONS),
    }
    return CommandResult(data, "\n".join(lines))


def _advance(progress: TutorialProgress) -> TutorialProgress:
    """Mark the current lesson done and begin the next."""
    completed = (*progress.completed, progress.current)
    advanced = TutorialProgress(progress.user_id, progress.current, completed, progress.context)
    return _begin(advanced, progress.current + 1)


async def _start_lesson(ctx: CommandContext, progress: TutorialProgress) -> TutorialProgress:
    """Record what the lesson compares against and store the progress."""
    lesson = LessonContext(ctx, progress)
    await _prepare(lesson)
    return _store(ctx).save(lesson.progress)


async def check_after_command(ctx: CommandContext) -> str | None:
    """Check the current lesson after a REPL command; return a line to show if it is now done.

    Only cheap checks run here; the others run when the user types `tutorial`.
    """
    store = _store(ctx)
    progress = store.get(ctx.user.id)
    if progress is None or progress.current > len(LESSONS):
        return None
    lesson_definition = LESSONS[progress.current - 1]
    if not lesson_definition.cheap:
        return None
    lesson = LessonContext(ctx, progress)
    check = await lesson_definition.check(lesson)
    if not check.passed:
        return None
    await _start_lesson(ctx, _advance(lesson.progress))
    title = lesson_definition.title
    return f'✓ Tutorial lesson {progress.current} done: {title}. Run "tutorial" for the next one.'


COMMANDS = [
    Command(
        "tutorial",
        "Ten short lessons, from creating a VM to sharing it; checks each step and keeps your progress.",
        tutorial,
        group="learn",
        arguments=_tutorial_arguments,
        examples=["tutorial", "tutorial --lesson 4", "tutorial --reset"],
    ),
]
