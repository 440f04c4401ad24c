"""The `skull` command: host, run, demo, doctor, calibrate, replay, service, status."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import sys
import threading
from pathlib import Path

from .core.errors import SkullError

log = logging.getLogger("skull.cli")


def _logging(verbose: int, quiet_console: bool = False, quiet: bool = False) -> None:
    """The terminal's volume (skull.core.console): status lines by default, -q warnings and
    errors only, -v detail, -vv debug. ``quiet_console``: a command with a view of its own
    (the demo) shows errors only unless -v."""
    from .core.console import setup
    setup(verbose, quiet=quiet, status=not quiet_console)
    if quiet_console and verbose == 0:
        logging.getLogger().setLevel(logging.ERROR)


def _log_unhandled() -> None:
    """Whatever escapes a thread or a task is logged, never lost on a bare stderr."""
    def thread_hook(a):
        logging.getLogger("host.unhandled").error("thread %s died", a.thread.name if a.thread else "?",
                                                  exc_info=(a.exc_type, a.exc_value, a.exc_traceback))
    threading.excepthook = thread_hook

    def loop_hook(loop, context):
        logging.getLogger("host.unhandled").error("%s", context.get("message", "task error"),
                                                  exc_info=context.get("exception"))
    asyncio.get_running_loop().set_exception_handler(loop_hook)


def _config_file(filename: str, explicit: str | None, announce: bool = True):
    """The config file by the lookup order (a skull.core.places.ConfigChoice), announced on
    stderr unless ``announce`` is False (the caller announces it once it has started)."""
    from .core.places import find_config
    choice = find_config(filename, explicit)
    if announce:
        print(choice.line(), file=sys.stderr, flush=True)
    return choice


def _until_terminated(main, stopped: tuple[str, str] | None = None):
    """Run ``main()`` until it returns or SIGTERM (systemd's stop) or Ctrl-C cancels it: its
    finally blocks then run (the hardware is left safe, STOPPING=1 goes out). ``stopped``: the
    status logger and the line it says once everything has stopped."""
    import signal

    async def guarded():
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main()

    try:
        asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # asked to stop: what main() holds has been closed on its way out
    if stopped is not None:
        logging.getLogger(stopped[0]).info("%s", stopped[1])


def _listen_error(exc: OSError, bind: str, port: int) -> SkullError:
    """The socket error of a host that cannot listen, as one line saying what to change."""
    import errno
    where = f"{bind}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return SkullError(f"port {port} on {bind} is already in use (another skull host?): stop that program, "
                          f"or pick another port with --port (or [server] port in host.toml)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return SkullError(f"cannot listen on {bind}: no network interface of this machine has that address; "
                          f"give one of its addresses ('ip -brief address' lists them) or 0.0.0.0 for all, "
                          f"with --bind (or [server] bind in host.toml)")
    if exc.errno == errno.EACCES:
        return SkullError(f"not allowed to listen on {where}: ports below 1024 need root; pick a port above "
                          f"1024 with --port (default 8765)")
    if isinstance(exc, socket.gaierror):
        return SkullError(f"cannot listen on {bind!r}: not an address or a known host name; give an address "
                          f"such as 127.0.0.1 or 0.0.0.0 with --bind")
    return SkullError(f"cannot listen on {where}: {exc.strerror or exc}; check --bind and --port")


def cmd_host(args) -> int:
    from host.build import build_backends
    from host.check import all_up, check_backends, render
    from host.config import load_host_config
    from host.server import Host, cert_fingerprint
    from host.status import HostKeeper, check_skulls

    cfg = load_host_config(_config_file("host.toml", args.config).path)
    if args.check:
        lines = check_backends(cfg, build_backends(cfg))
        print(render(lines), flush=True)
        down = [f"{ln.stage} ({ln.backend})" for ln in lines if ln.status in ("down", "loading")]
        host_ok, host_lines = check_skulls(args.port if args.port is not None else cfg.server.port)
        print("\n".join(host_lines), flush=True)
        if not host_ok:
            down.append("the running host (stale status)")
        ok = all_up(lines) and host_ok
        print("all backends up" if ok else f"not ready: {', '.join(down)}", flush=True)
        return 0 if ok else 1
    server = cfg.server
    token = args.token if args.token is not None else os.environ.get("SKULL_TOKEN", server.token)
    server = dataclasses.replace(server, bind=args.bind or server.bind,
                                 port=args.port if args.port is not None else server.port, token=token,
                                 tls_cert=args.tls_cert or server.tls_cert, tls_key=args.tls_key or server.tls_key,
                                 discovery=server.discovery and not args.no_discovery)
    if args.print_fingerprint:
        if not server.tls_cert:
            raise SkullError("no certificate to fingerprint: give --tls-cert (or [server] tls_cert in host.toml)")
        print(cert_fingerprint(server.tls_cert), flush=True)
        return 0
    server.check("skull host [server]")  # the flags are held to host.toml's rules
    cfg = dataclasses.replace(cfg, server=server)
    if args.dashboard is not None:
        dashboard = dataclasses.replace(cfg.dashboard, listen=args.dashboard)
        dashboard.check("skull host --dashboard")
        cfg = dataclasses.replace(cfg, dashboard=dashboard)

    async def main():
        _log_unhandled()
        host = Host(cfg)  # refuses a non-loopback bind without a token
        try:
            await host.start()
        except OSError as exc:
            await host.stop()
            raise _listen_error(exc, server.bind, server.port) from None
        except SkullError:  # e.g. [server] core names a core this machine does not let it use
            await host.stop()
            raise
        host.keep_to_one_core()
        if server.tls_cert:
            fingerprint = cert_fingerprint(server.tls_cert)
            print(f"skull host listening on wss://{server.bind}:{host.port}\ncertificate {fingerprint}: a skull "
                  f"trusting this self-signed certificate sets [link] tls_fingerprint = \"{fingerprint}\"", flush=True)
        else:
            print(f"skull host listening on ws://{server.bind}:{host.port}", flush=True)
        if host.dashboard is not None:
            print(f"dashboard at {host.dashboard.url}{'?token=...' if host.dashboard.token else ''}", flush=True)
        keeper = HostKeeper(host, f"{'wss' if server.tls_cert else 'ws'}://{server.bind}:{host.port}")
        kept = asyncio.create_task(keeper.run(), name="host-status")  # READY=1, status file, watchdog
        try:
            for ln in await asyncio.to_thread(check_backends, cfg, host.backends):  # name the dead ones at once
                level = logging.INFO if ln.status in ("up", "-") else logging.WARNING
                logging.getLogger("host").log(level, "%s backend %s: %s%s", ln.stage, ln.backend, ln.status,
                                              f" ({ln.detail})" if ln.status != "up" else f", {ln.detail}")
            await asyncio.Future()
        finally:
            kept.cancel()
            keeper.close()
            await host.stop()

    _until_terminated(main, ("host.status", "skull host stopped"))
    return 0


def _skull_config(args, announce: bool = True):
    from .config import load_skull_config
    args.config_choice = _config_file("skull.toml", args.config, announce)
    cfg = load_skull_config(args.config_choice.path, calibration=getattr(args, "calibration", None))
    link = cfg.link
    token = args.token if args.token is not None else os.environ.get("SKULL_TOKEN", link.token)
    link = dataclasses.replace(link, url=args.url or link.url, token=token, name=args.name or link.name,
                               tls_fingerprint=getattr(args, "tls_fingerprint", None) or link.tls_fingerprint,
                               tls_ca=getattr(args, "tls_ca", None) or link.tls_ca,
                               discovery=link.discovery and not getattr(args, "no_discovery", False))
    link.check(f"skull {args.command} [link]")  # the flags are held to skull.toml's rules
    return dataclasses.replace(cfg, link=link)


def open_turn_log(settings, path: str | None = None):
    """The skull's JSON-lines turn log: ``path`` (--turn-log) or ``[log] turns``; None when
    neither names a file. A path that cannot be written is a ConfigError naming it."""
    from .core.jsonlog import JsonLines
    path = path if path is not None else settings.turns
    if not path:
        return None
    key = "--turn-log" if path != settings.turns else "skull.toml [log] turns"
    return JsonLines(path, max_mb=settings.max_mb, backups=settings.backups, key=key)


def _record_dir(path: str | None) -> Path | None:
    """--record's folder; a path that is a file is refused at once, not turn by turn."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SkullError(f"--record {path} is a file, not a folder; give a folder to record the turns in "
                         f"(it is made if missing), e.g. --record sessions/")
    return folder


def cmd_run(args) -> int:
    from .agent import Agent
    from .runtime import build_body

    cfg = _skull_config(args, announce=False)
    _record_dir(args.record)
    turn_log = open_turn_log(cfg.log, args.turn_log)  # before the devices: a bad path opens nothing
    try:
        body = build_body(cfg, sim=args.sim, mic_file=args.mic_file, image=args.image, audio=not args.no_audio)
    except BaseException:
        if turn_log is not None:
            turn_log.close()
        raise
    print(args.config_choice.line(), file=sys.stderr, flush=True)  # once the skull's devices are open
    print(_calibration_line(cfg, args.config_choice.path), file=sys.stderr, flush=True)
    agent = Agent(cfg, body, record_dir=args.record, turn_log=turn_log)
    from .console import StatusLines
    StatusLines(agent)  # connected, listening, heard, said...: shown by default, hidden by -q
    if args.sim:
        pin = body.panel.button.pin

        def keyboard():  # Enter toggles the simulated button
            for _ in sys.stdin:
                if pin.state:  # pulled up = released
                    pin.drive_low()
                    print("button: pressed (Enter to release)", flush=True)
                else:
                    pin.drive_high()
                    print("button: released", flush=True)

        if sys.stdin is not None and sys.stdin.isatty():
            print("simulated skull: press Enter to press the button, Enter again to release it", flush=True)
        threading.Thread(target=keyboard, name="keyboard", daemon=True).start()
    async def main():
        from .status import Keeper
        keeper = Keeper(agent)
        kept = asyncio.create_task(keeper.run(), name="skull-status")  # READY=1, status file, watchdog
        try:
            await agent.run()
        finally:
            kept.cancel()
            keeper.close()

    try:
        _until_terminated(main)
    finally:
        agent.close()
    logging.getLogger("skull.console").info("skull stopped: jaw closed, servo detached, LED off")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import diagnose
    cfg = _skull_config(args)
    if args.sim:  # as skull run --sim: the board is simulated, so GPIO and USB boards are not needed
        cfg = dataclasses.replace(cfg, board=dataclasses.replace(cfg.board, driver="sim"))
    findings = diagnose(cfg, args.config_choice.path)
    width = max(len(f.what) for f in findings)
    for f in findings:
        print(f"{f.status:<4}  {f.what:<{width}}  {f.detail}", flush=True)
    failed = [f.what for f in findings if f.status == "FAIL"]
    print("all good" if not failed else f"{len(failed)} problem(s): {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from rich.console import Console

    from .config import load_skull_config
    from .core.data import bundled
    from .demo import print_summary, run_demo

    console = Console()
    question = Path(args.question) if args.question else bundled("question.wav")
    image = Path(args.image) if args.image else bundled("snapshot.jpg")
    for what, path in (("question", question), ("image", image)):
        if not path.is_file():
            raise SkullError(f"{what} file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}; "
                             f"give --{what} a file, or leave it out for the bundled one")
    _record_dir(args.record)
    cfg = load_skull_config(args.config, calibration=args.calibration)
    host_cfg = None
    if args.host_config is not None:
        from host.config import load_host_config
        if not Path(args.host_config).expanduser().is_file():
            raise SkullError(f"--host-config {args.host_config} is not a file; give a host.toml (examples in "
                             f"host/examples/), or leave --host-config out for the embedded models")
        host_cfg = load_host_config(Path(args.host_config).expanduser())
        # the demo's host listens where only its own skull finds it (plain ws:// on loopback, a
        # free port), whatever [server] says; the stages are host.toml's
        host_cfg = dataclasses.replace(host_cfg, server=dataclasses.replace(
            host_cfg.server, bind="127.0.0.1", port=0, tls_cert="", tls_key=""))
    try:
        agent = asyncio.run(run_demo(question, image, record=_record_dir(args.record),
                                     audio=not args.no_audio, turns=args.turns, console=console, skull_config=cfg,
                                     host_config=host_cfg, timeout_s=args.turn_timeout))
    except KeyboardInterrupt:
        console.print("interrupted; the jaw is closed and the LED is off")
        return 130
    return print_summary(agent, console)


def _calibration_line(cfg, config_path) -> str:
    """The servo profile in use, as one line like the config line: ``calibration: FILE``."""
    from .core.places import is_bundled
    from .core.validate import read_toml
    c = cfg.calibration
    values = f"closed {c.closed_us:.0f} us, open {c.open_us:.0f} us, lead {c.lead_ms:.0f} ms"
    if cfg.jaw.calibration:
        bundled = (" (the bundled default; skull calibrate makes this jaw's own)"
                   if is_bundled(cfg.jaw.calibration) else "")
        return f"calibration: {cfg.jaw.calibration}{bundled}: {values}"
    if config_path is not None and "calibration" in read_toml(config_path)[0]:
        return f"calibration: the [calibration] table of {config_path}: {values}"
    return f"calibration: built-in defaults (no profile file found): {values}"


def cmd_calibrate(args) -> int:
    from .calibrate import cmd_calibrate as run
    if args.jaw:  # the old spelling, before the flag took skull.toml's name
        print(f"skull calibrate: --jaw is now --board (skull.toml's [board] driver): use --board {args.jaw}",
              file=sys.stderr, flush=True)
    if args.sim and (args.board or args.jaw) not in (None, "sim"):
        raise SkullError(f"--sim and --board {args.board or args.jaw} disagree: give one of them")
    args.board = "sim" if args.sim else (args.board or args.jaw)
    found = _config_file("skull.toml", args.config).path  # profiles are saved beside the config found
    args.config = str(found) if found is not None else None
    return run(args)


def cmd_replay(args) -> int:
    from .config import load_skull_config
    from .replay import cmd_replay as run
    if args.jaw:  # the old spelling, before the flag took skull.toml's name
        print(f"skull replay: --jaw is now --board (skull.toml's [board] driver): use --board {args.jaw}",
              file=sys.stderr, flush=True)
        args.board = args.jaw
    if args.sim and args.board not in (None, "sim"):
        raise SkullError(f"--sim and --board {args.board} disagree: give one of them")
    args.board = "sim" if args.sim else (args.board or "sim")
    args.jaw = args.board  # the replay code's name for it
    cfg = load_skull_config(_config_file("skull.toml", args.config).path, calibration=args.calibration)
    return run(args, cfg)


def cmd_service(args) -> int:
    from .service import install, uninstall
    if args.action == "install":
        return install(args.what, user=args.user, config=args.config, start=not args.no_start, show=args.print)
    return uninstall(args.what, user=args.user)


def cmd_status(args) -> int:
    from .status import cmd_status as run
    return run(args)


CONFIG_LOOKUP = "; default: $SKULL_CONFIG, ~/.config/skull/skull.toml, /etc/skull/skull.toml, built-in defaults"


class _Help(argparse.HelpFormatter):
    """Help that shows an option's default where it has one and its text does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or isinstance(action, (argparse._VersionAction, argparse._HelpAction))):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The skull's parsers (subcommands included): help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("talking-skull")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__
        return __version__


def _loudness(parser: argparse.ArgumentParser, after_subcommand: bool) -> None:
    """-v/-q, accepted before the subcommand and after it (``skull run --sim -v``). After it they
    count into their own names, added to the ones before by ``main``."""
    prefix, default = ("sub_", argparse.SUPPRESS) if after_subcommand else ("", 0)
    parser.add_argument("-v", "--verbose", dest=f"{prefix}verbose", action="count", default=default,
                        help="more log output: -v shows the info lines, -vv the debug ones")
    parser.add_argument("-q", "--quiet", dest=f"{prefix}quiet", action="count", default=default,
                        help="warnings and errors only: no status line per state change or turn")


DESCRIPTIONS = {
    "host": "Run the host: it hears the skull's question, looks at its snapshot, finds a reply and speaks it "
            "back with a jaw track. With no host.toml every model is embedded (no servers needed).",
    "run": "Run the skull's agent: button, LED, microphone, camera, speaker and jaw servo, connected to a "
           "host. --sim simulates the button, LED and servo so it runs on any PC.",
    "calibrate": "Find the jaw servo's closed and open pulses, its travel time and lead, and save them as a "
                 "profile (interactive, or give --closed-us and --open-us).",
    "replay": "Play a recorded session (skull run --record) through the jaw again and measure how well the "
              "jaw kept time with the sound.",
    "doctor": "Check the skull's devices, boards, calibration and host, and say what to fix.",
    "demo": "Start a host and a simulated skull in one go and let a scripted visitor ask a question: the "
            "quickest way to see the whole product work, with no hardware and no model servers.",
    "service": "Install or remove the systemd unit that starts the host or the skull at boot (docs/service.md).",
    "status": "The running skull at a glance: state, connection, turns and disk.",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too few: give 1 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} s: give more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="skull", description="The talking skull: an AI animatronic prop. Try 'skull demo' first; "
                                           "'skull COMMAND -h' tells more about each command.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _loudness(ap, after_subcommand=False)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    h = sub.add_parser("host", help="run the host that hears, looks, replies and speaks")
    h.add_argument("--bind", metavar="ADDRESS", help="address to listen on (default 127.0.0.1; others need a token)")
    h.add_argument("--port", metavar="PORT", type=int, help="port (default 8765)")
    h.add_argument("--token", metavar="SECRET", help="shared secret skulls must send (default: $SKULL_TOKEN)")
    h.add_argument("--config", metavar="FILE", help="host.toml (examples in host/examples/); default: $SKULL_HOST_CONFIG, "
                                    "~/.config/skull/host.toml, /etc/skull/host.toml, built-in defaults")
    h.add_argument("--no-discovery", action="store_true", help="do not advertise this host over mDNS (for "
                   "networks that forbid multicast; [server] discovery = false)")
    h.add_argument("--tls-cert", metavar="FILE", help="serve wss:// with this PEM certificate (chain) file (docs/internet.md)")
    h.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key file")
    h.add_argument("--print-fingerprint", action="store_true", help="print the certificate's SHA-256 "
                                                                    "fingerprint (for [link] tls_fingerprint) and exit")
    h.add_argument("--dashboard", metavar="[ADDR:]PORT", help="serve the operator's web dashboard and /metrics "
                                                              "there (default: [dashboard] listen, none); an address "
                                                              "beyond this machine needs a token (docs/dashboard.md)")
    h.add_argument("--check", action="store_true", help="check every configured backend (up/down, model, "
                                                        "round trip) and the skulls connected to a host running "
                                                        "on this port, and exit: 0 when all are up, 1 if not")
    h.set_defaults(func=cmd_host)

    r = sub.add_parser("run", help="run the skull's agent")
    r.add_argument("--sim", action="store_true", help="simulated button, LED and servo (gpiozero MockFactory); "
                                                      "Enter toggles the button")
    r.add_argument("--url", metavar="URL", help="host websocket URL (default: [link] url; none: a host on this "
                   "machine at ws://127.0.0.1:8765, else one found over mDNS)")
    r.add_argument("--no-discovery", action="store_true", help="do not look for the host over mDNS (for networks "
                   "that forbid multicast; [link] discovery = false)")
    r.add_argument("--token", metavar="SECRET", help="shared secret (default: $SKULL_TOKEN)")
    r.add_argument("--name", metavar="NAME", help="this skull's name")
    r.add_argument("--tls-fingerprint", metavar="SHA256", help="wss:// only: trust exactly the host certificate with this SHA-256 "
                                             "fingerprint (sha256:AB:CD:..., from skull host --print-fingerprint)")
    r.add_argument("--tls-ca", metavar="FILE", help="wss:// only: a PEM file of certificate authorities to trust instead of the "
                                    "system's")
    r.add_argument("--config", metavar="FILE", help="skull.toml" + CONFIG_LOOKUP)
    r.add_argument("--mic-file", metavar="WAV", help="a WAV played as the microphone on each press")
    r.add_argument("--image", metavar="FILE", help="a picture used as the camera")
    r.add_argument("--no-audio", action="store_true", help="no sound devices (needs --mic-file)")
    r.add_argument("--record", metavar="DIR", help="record each turn under this folder (turn-001/, turn-002/...); paused while "
                                    "its disk has less than [record] min_free_mb free")
    r.add_argument("--turn-log", metavar="FILE", help="append one JSON line per finished turn to this file, rotated by size "
                                      "(default: skull.toml [log] turns; '' for none)")
    r.add_argument("--calibration", metavar="PROFILE", help="servo profile: a NAME (calibration/NAME.toml beside the config file, "
                                         "else in ~/.config/skull/) or a path; default: skull.toml's, else "
                                         "calibration/default.toml found the same way, else the bundled one")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("calibrate", help="find the jaw servo's closed and open pulses, travel time and lead; "
                                         "save calibration/NAME.toml beside the config file in use (else in "
                                         "~/.config/skull/)")
    c.add_argument("--name", metavar="NAME", default="default", help="profile name (calibration/NAME.toml; default: default, "
                                                     "which skull run uses unless told otherwise)")
    c.add_argument("--closed-us", metavar="US", type=float, help="pulse with the jaw shut, microseconds (non-interactive)")
    c.add_argument("--open-us", metavar="US", type=float, help="pulse with the jaw fully open, microseconds (non-interactive)")
    c.add_argument("--lead-ms", metavar="MS", type=float, help="command the jaw this early; default: worked out from the travel")
    c.add_argument("--travel-ms", metavar="MS", type=float, help="servo time from closed to open (default 42: an SG90 at 6 V)")
    c.add_argument("--board", choices=("sim", "gpio", "firmata", "serial"),
                   help="the board whose jaw to jog, as skull.toml's [board] driver (default: skull.toml's)")
    c.add_argument("--sim", action="store_true", help="the same as --board sim: a simulated jaw, shown as a bar")
    c.add_argument("--jaw", choices=("sim", "gpio", "firmata", "serial"), help=argparse.SUPPRESS)  # now --board
    c.add_argument("--config", metavar="FILE", help="skull.toml (board, pins, port)" + CONFIG_LOOKUP)
    c.add_argument("--dir", metavar="DIR", help="folder of the profiles (default: calibration/ beside the config file in use, "
                                 "else ~/.config/skull/calibration/; never the bundled default)")
    c.set_defaults(func=cmd_calibrate)

    rp = sub.add_parser("replay", help="play a recorded session through the jaw and measure the sync")
    rp.add_argument("session", metavar="DIR", help="a folder written by --record (turn-NNN/ folders), or one turn-NNN folder")
    rp.add_argument("--turn", metavar="N", type=int, help="only this turn number")
    rp.add_argument("--board", choices=("sim", "gpio", "firmata", "serial"),
                    help="the board whose jaw moves, as skull.toml's [board] driver (default sim; the board's "
                         "settings come from skull.toml)")
    rp.add_argument("--sim", action="store_true", help="the same as --board sim: a simulated jaw (the default)")
    rp.add_argument("--jaw", choices=("sim", "gpio", "firmata", "serial"), help=argparse.SUPPRESS)  # now --board
    rp.add_argument("--report", action="store_true", help="print lag, correlation, commands/s, largest step, "
                                                          "time outside limits")
    rp.add_argument("--plot", metavar="PNG", help="draw waveform, envelope, commanded and physical jaw into this .png")
    rp.add_argument("--retrack", action="store_true", help="remake the jaw track with skull.toml's [shape] "
                                                           "(to tune it) instead of the recorded one")
    rp.add_argument("--no-audio", action="store_true", help="do not open the speaker (timed, not heard)")
    rp.add_argument("--heard", action=argparse.BooleanOptionalAction, default=None,
                    help="score the jaw against what the speaker really played (the sound server's monitor); "
                         "default: whenever the speaker is a real device behind PulseAudio or PipeWire. "
                         "--no-heard: against the sound as scheduled")
    rp.add_argument("--config", metavar="FILE", help="skull.toml ([board], [jaw], [shape])" + CONFIG_LOOKUP)
    rp.add_argument("--calibration", metavar="PROFILE", help="servo profile NAME or path (lead and travel come from it)")
    rp.set_defaults(func=cmd_replay)

    dr = sub.add_parser("doctor", help="check the skull's devices, boards, calibration and host, and say what to fix")
    dr.add_argument("--config", metavar="FILE", help="skull.toml" + CONFIG_LOOKUP)
    dr.add_argument("--sim", action="store_true", help="check as for skull run --sim: a simulated board "
                                                      "([board] driver = \"sim\"), so no GPIO or USB board is needed")
    dr.add_argument("--url", metavar="URL", help="host websocket URL (default from skull.toml)")
    dr.add_argument("--token", metavar="SECRET", help="shared secret (default: $SKULL_TOKEN)")
    dr.add_argument("--name", metavar="NAME", help="this skull's name")
    dr.set_defaults(func=cmd_doctor)

    d = sub.add_parser("demo", help="a host and a simulated skull on this machine answer a question (try it first)")
    d.add_argument("--question", metavar="WAV", help="the question, a WAV file (any rate, mono or stereo); default: bundled")
    d.add_argument("--image", metavar="FILE", help="the snapshot, an image file; default: bundled")
    d.add_argument("--record", metavar="DIR", help="write each turn to DIR/turn-NNN/")
    d.add_argument("--no-audio", action="store_true", help="do not open sound devices")
    d.add_argument("--turns", metavar="N", type=_positive_int, default=1, help="how many times to ask (default 1)")
    d.add_argument("--turn-timeout", metavar="SECONDS", type=_positive_float, default=120.0,
                   help="each turn may take this long beyond the question's own length")
    d.add_argument("--host-config", metavar="FILE", help="a host.toml whose backends (model servers) answer "
                                                         "(examples in host/examples/); default: embedded models")
    d.add_argument("--config", metavar="FILE", help="a skull.toml for the simulated skull (default: built-in defaults)")
    d.add_argument("--calibration", metavar="PROFILE", help="servo profile: a NAME (calibration/NAME.toml) or a path")
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("service", help="install or remove the systemd unit that runs the host or the skull at "
                                        "boot (docs/service.md)")
    svs = sv.add_subparsers(dest="action", required=True)
    si = svs.add_parser("install", help="write the unit, then systemctl daemon-reload and enable --now")
    si.add_argument("what", choices=("host", "skull"))
    si.add_argument("--user", action="store_true", help="a unit of your own user (~/.config/systemd/user/), "
                                                        "where the sound server runs; default: a system unit "
                                                        "(/etc/systemd/system/, needs sudo)")
    si.add_argument("--config", metavar="FILE", help="the config file the unit runs with (default: the one skull would find now)")
    si.add_argument("--no-start", action="store_true", help="write the unit only; print the systemctl commands")
    si.add_argument("--print", action="store_true", help="print the unit and write nothing")
    su = svs.add_parser("uninstall", help="stop, disable and remove the unit, then systemctl daemon-reload")
    su.add_argument("what", choices=("host", "skull"))
    su.add_argument("--user", action="store_true", help="your own user's unit (as installed with --user)")
    sv.set_defaults(func=cmd_service)

    st = sub.add_parser("status", help="the running skull at a glance; exit 0 when it runs and is connected, "
                                       "1 when offline or its disk is low, 3 when it is not running")
    st.add_argument("--name", metavar="NAME", help="the skull's name (default: the only skull running)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.add_argument("--min-free-mb", metavar="MB", type=float, default=200.0,
                    help="the record folder's disk is low below this many free megabytes (default 200)")
    st.set_defaults(func=cmd_status)
    for name, parser in sub.choices.items():
        parser.description = parser.description or DESCRIPTIONS.get(name)
        _loudness(parser, after_subcommand=True)
    for choice in svs._choices_actions:  # install, uninstall: their help says it all
        parser = svs.choices[choice.dest]
        parser.description = parser.description or choice.help[:1].upper() + choice.help[1:] + "."
        _loudness(parser, after_subcommand=True)
    return ap


def _subcommand_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub-)subcommand ``args`` chose: its usage is the one to show."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand that was given them, with its own usage
        _subcommand_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    args.verbose += getattr(args, "sub_verbose", 0)
    args.quiet = bool(args.quiet + getattr(args, "sub_quiet", 0))
    _logging(args.verbose, quiet_console=args.command == "demo", quiet=args.quiet)
    try:
        return args.func(args)
    except SkullError as exc:
        print(f"skull {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skull {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback for whoever reports it
        if args.verbose:
            log.error("unexpected error", exc_info=True)
        print(f"skull {args.command}: error: unexpected {type(exc).__name__}: {exc} (a bug; 'skull -v "
              f"{args.command} ...' shows where: please report it with that output)", file=sys.stderr)
        return 2
