"""The talk state machine, without I/O: events in, actions out.

    OFFLINE --connected--> IDLE --button down--> LISTENING --button up / limit--> THINKING
    THINKING --speech--> SPEAKING --done and drained--> IDLE
    THINKING/SPEAKING --button down--> LISTENING (interrupt: stop audio, close jaw, new turn)
    any --disconnected--> OFFLINE (stop mic and audio, close jaw, LED blinks)

Events and actions are tuples ``(name, *args)`` so tests can list them literally. Events of an
older turn (a late segment after an interrupt) are dropped.
"""
from __future__ import annotations

import enum
import logging

log = logging.getLogger("skull.machine")


class State(enum.Enum):
    OFFLINE = "offline"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


# events
CONNECTED, DISCONNECTED = "connected", "disconnected"
BUTTON_DOWN, BUTTON_UP, RECORD_LIMIT = "button_down", "button_up", "record_limit"
ACK_LISTEN, ACK_STOP, SEGMENT, DONE, DRAINED, REPLY_TIMEOUT = (
    "ack_listen", "ack_stop", "segment", "done", "drained", "reply_timeout")

_TURN_EVENTS = {ACK_LISTEN, ACK_STOP, SEGMENT, DONE, RECORD_LIMIT, REPLY_TIMEOUT}


class TalkMachine:
    def __init__(self, first_turn: int = 1):
        self.state = State.OFFLINE
        self.turn = first_turn - 1
        self.done = False  # the host has sent every segment of the current turn
        self.drained = True  # everything received so far has been played
        self.segments = 0

    def handle(self, event: tuple) -> list[tuple]:
        name, args = event[0], event[1:]
        if name in _TURN_EVENTS and args and args[0] != self.turn:
            log.debug("dropped %s of old turn %s (current %d)", name, args[0], self.turn)
            return []
        before = self.state
        actions = self._handle(name, args)
        if self.state is not before:
            log.debug("%s --%s--> %s", before.name, name, self.state.name)
        return actions

    def _new_turn(self) -> list[tuple]:
        self.turn += 1
        self.done, self.drained, self.segments = False, True, 0
        self.state = State.LISTENING
        t = self.turn
        # the mic opens at once and buffers until the host acknowledges: no first word lost
        return [("mic_start", t), ("send_listen", t), ("snapshot", t)]

    def _end_turn(self, reason: str) -> list[tuple]:
        self.state = State.IDLE
        return [("jaw_close",), ("led", "off"), ("turn_end", self.turn, reason)]

    def _handle(self, name: str, args: tuple) -> list[tuple]:
        s = self.state
        if name == DISCONNECTED:
            if s is State.OFFLINE:
                return []
            acts = [("mic_stop", self.turn)] if s is State.LISTENING else []
            acts += [("stop_playback",), ("jaw_close",), ("led", "offline")]
            if s in (State.LISTENING, State.THINKING, State.SPEAKING):
                acts.append(("turn_end", self.turn, "disconnected"))
            self.state = State.OFFLINE
            return acts
        if s is State.OFFLINE:
            if name == CONNECTED:
                self.state = State.IDLE
                return [("jaw_close",), ("led", "off")]
            return []
        if name == BUTTON_DOWN:
            if s is State.IDLE:
                return self._new_turn()
            if s in (State.THINKING, State.SPEAKING):  # interrupt
                old = self.turn
                return [("stop_playback",), ("jaw_close",), ("led", "off"), ("turn_end", old, "interrupted"),
                        *self._new_turn()]
            return []
        if s is State.LISTENING:
            if name == ACK_LISTEN:
                return [("led", "on"), ("stream_audio", self.turn)]
            if name in (BUTTON_UP, RECORD_LIMIT):
                self.state = State.THINKING
                reason = "released" if name == BUTTON_UP else "max_length"
                return [("mic_stop", self.turn), ("send_stop", self.turn, reason)]
            return []
        if name == ACK_STOP:
            return [("led", "off")]
        if s is State.THINKING:
            if name == SEGMENT:
                self.state = State.SPEAKING
                self.segments += 1
                self.drained = False
                return [("play", self.turn) + tuple(args[1:])]
            if name == DONE:
                self.done = True
                return self._end_turn("no reply") if self.segments == 0 else []
            if name == REPLY_TIMEOUT:
                return self._end_turn("timeout")
            return []
        if s is State.SPEAKING:
            if name == SEGMENT:
                self.segments += 1
                self.drained = False
                return [("play", self.turn) + tuple(args[1:])]
            if name == DONE:
                self.done = True
            elif name == DRAINED:
                self.drained = True
            else:
                return []
            return self._end_turn("answered") if self.done and self.drained else []
        return []
