"""Every transition of the talk state machine, including interrupt and disconnect."""
import pytest

from skull import machine as m
from skull.machine import State, TalkMachine


def at(state: State) -> TalkMachine:
    """A machine in ``state`` during turn 1, reached by real transitions."""
    mc = TalkMachine()
    mc.handle((m.CONNECTED,))
    if state is State.IDLE:
        return mc
    if state is State.OFFLINE:
        mc.handle((m.DISCONNECTED,))
        return mc
    mc.handle((m.BUTTON_DOWN,))
    if state is State.LISTENING:
        return mc
    mc.handle((m.BUTTON_UP,))
    if state is State.THINKING:
        return mc
    mc.handle((m.SEGMENT, mc.turn, "msg", b"pcm"))
    assert mc.state is State.SPEAKING
    return mc


def test_starts_offline_and_connecting_makes_it_idle():
    mc = TalkMachine()
    assert mc.state is State.OFFLINE
    assert mc.handle((m.CONNECTED,)) == [("jaw_close",), ("led", "off")]
    assert mc.state is State.IDLE


def test_offline_ignores_the_button():
    mc = at(State.OFFLINE)
    assert mc.handle((m.BUTTON_DOWN,)) == []
    assert mc.state is State.OFFLINE


def test_button_down_starts_a_turn_mic_first():
    mc = at(State.IDLE)
    assert mc.handle((m.BUTTON_DOWN,)) == [("mic_start", 1), ("send_listen", 1), ("snapshot", 1)]
    assert mc.state is State.LISTENING and mc.turn == 1


def test_ack_listen_lights_led_and_streams():
    mc = at(State.LISTENING)
    assert mc.handle((m.ACK_LISTEN, 1)) == [("led", "on"), ("stream_audio", 1)]
    assert mc.state is State.LISTENING


@pytest.mark.parametrize("event, reason", [((m.BUTTON_UP,), "released"), ((m.RECORD_LIMIT, 1), "max_length")])
def test_release_or_length_limit_stops_recording(event, reason):
    mc = at(State.LISTENING)
    assert mc.handle(event) == [("mic_stop", 1), ("send_stop", 1, reason)]
    assert mc.state is State.THINKING


def test_ack_stop_turns_led_off():
    mc = at(State.THINKING)
    assert mc.handle((m.ACK_STOP, 1)) == [("led", "off")]


def test_first_segment_starts_speaking_and_more_are_queued():
    mc = at(State.THINKING)
    assert mc.handle((m.SEGMENT, 1, "s0", b"a")) == [("play", 1, "s0", b"a")]
    assert mc.state is State.SPEAKING
    assert mc.handle((m.SEGMENT, 1, "s1", b"b")) == [("play", 1, "s1", b"b")]


def test_done_then_drained_ends_the_turn():
    mc = at(State.SPEAKING)
    assert mc.handle((m.DONE, 1)) == []
    assert mc.handle((m.DRAINED,)) == [("jaw_close",), ("led", "off"), ("turn_end", 1, "answered")]
    assert mc.state is State.IDLE


def test_drained_before_done_waits_for_done():
    mc = at(State.SPEAKING)
    assert mc.handle((m.DRAINED,)) == []  # the next sentence may still come
    assert mc.state is State.SPEAKING
    assert mc.handle((m.DONE, 1))[-1] == ("turn_end", 1, "answered")


def test_done_without_any_segment_returns_to_idle():
    mc = at(State.THINKING)
    assert mc.handle((m.DONE, 1))[-1] == ("turn_end", 1, "no reply")
    assert mc.state is State.IDLE


def test_reply_timeout_returns_to_idle():
    mc = at(State.THINKING)
    assert mc.handle((m.REPLY_TIMEOUT, 1))[-1] == ("turn_end", 1, "timeout")
    assert mc.state is State.IDLE


@pytest.mark.parametrize("state", [State.SPEAKING, State.THINKING])
def test_button_while_answering_interrupts(state):
    mc = at(state)
    acts = mc.handle((m.BUTTON_DOWN,))
    assert acts == [("stop_playback",), ("jaw_close",), ("led", "off"), ("turn_end", 1, "interrupted"),
                    ("mic_start", 2), ("send_listen", 2), ("snapshot", 2)]
    assert mc.state is State.LISTENING and mc.turn == 2


def test_stale_segments_after_interrupt_are_dropped():
    mc = at(State.SPEAKING)
    mc.handle((m.BUTTON_DOWN,))
    assert mc.handle((m.SEGMENT, 1, "late", b"x")) == []
    assert mc.handle((m.DONE, 1)) == []
    assert mc.state is State.LISTENING


@pytest.mark.parametrize("state, first", [(State.LISTENING, [("mic_stop", 1)]), (State.THINKING, []),
                                          (State.SPEAKING, []), (State.IDLE, [])])
def test_disconnect_closes_everything(state, first):
    mc = at(state)
    acts = mc.handle((m.DISCONNECTED,))
    assert acts[:len(first)] == first
    assert acts[len(first):len(first) + 3] == [("stop_playback",), ("jaw_close",), ("led", "offline")]
    assert (("turn_end", 1, "disconnected") in acts) == (state is not State.IDLE)
    assert mc.state is State.OFFLINE
    assert mc.handle((m.DISCONNECTED,)) == []


def test_reconnect_then_next_turn_has_a_new_number():
    mc = at(State.SPEAKING)
    mc.handle((m.DISCONNECTED,))
    mc.handle((m.CONNECTED,))
    assert mc.handle((m.BUTTON_DOWN,))[0] == ("mic_start", 2)


@pytest.mark.parametrize("state", [State.IDLE, State.THINKING, State.SPEAKING])
def test_button_up_outside_listening_is_ignored(state):
    mc = at(state)
    assert mc.handle((m.BUTTON_UP,)) == []
    assert mc.state is state


def test_button_down_while_listening_is_ignored():
    mc = at(State.LISTENING)
    assert mc.handle((m.BUTTON_DOWN,)) == []
    assert mc.turn == 1
