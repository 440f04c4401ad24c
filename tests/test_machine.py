"""Every transition of the talk state machine, including interrupt, disconnect and fault, and the
agent's exhaustive dispatch: an action the machine can emit without a handler fails here."""
import itertools

import numpy as np
import pytest

from skull import machine as m
from skull.machine import (AckListen, AckStop, ButtonDown, ButtonUp, Connected, Disconnected, Drained, Fault,
                           HostDone, JawClose, Led, LedPattern, MicStart, MicStop, Play, RecordLimit, ReplyTimeout,
                           SegmentArrived, SendListen, SendStop, Snapshot, State, StopPlayback, StreamAudio,
                           TalkMachine, TurnEnd)
from skull.segment import ReplySegment

OFF, ON, OFFLINE = LedPattern.OFF, LedPattern.ON, LedPattern.OFFLINE


def seg(turn: int, seq: int = 0, text: str = "Boo.") -> ReplySegment:
    return ReplySegment(turn, seq, text, np.zeros(100, np.float32), 16000, np.zeros(1, np.float32), 100)


S0, S1 = seg(1, 0), seg(1, 1)


def at(state: State) -> TalkMachine:
    """A machine in ``state`` during turn 1, reached by real transitions."""
    mc = TalkMachine()
    mc.handle(Connected())
    if state is State.IDLE:
        return mc
    if state is State.OFFLINE:
        mc.handle(Disconnected())
        return mc
    mc.handle(ButtonDown())
    if state is State.LISTENING:
        return mc
    mc.handle(ButtonUp())
    if state is State.THINKING:
        return mc
    mc.handle(SegmentArrived(mc.turn, S0))
    assert mc.state is State.SPEAKING
    return mc


def test_starts_offline_and_connecting_makes_it_idle():
    mc = TalkMachine()
    assert mc.state is State.OFFLINE
    assert mc.handle(Connected()) == [JawClose(), Led(OFF)]
    assert mc.state is State.IDLE


def test_offline_the_button_says_a_line_of_the_skulls_own_never_two_at_once():
    mc = at(State.OFFLINE)
    assert mc.handle(ButtonDown()) == [m.PlayLine("offline")]
    assert mc.state is State.OFFLINE and mc.saying
    assert mc.handle(ButtonDown()) == []  # a press while the line plays does not stack lines
    assert mc.handle(m.IdleLine("attract")) == []
    assert mc.handle(Drained()) == [] and not mc.saying
    assert mc.handle(ButtonDown()) == [m.PlayLine("offline")]
    assert mc.turn == 0  # no turn was started: there is no host to take it


def test_the_host_back_while_the_apology_plays_leaves_the_line_to_finish():
    mc = at(State.OFFLINE)
    mc.handle(ButtonDown())
    assert mc.handle(Connected()) == [Led(OFF)]  # no JawClose: the line's track shuts the jaw itself
    assert mc.state is State.IDLE and mc.saying


def test_idle_lines_play_one_at_a_time_and_a_press_cuts_them_for_a_turn():
    mc = at(State.IDLE)
    assert mc.handle(m.IdleLine("attract")) == [m.PlayLine("attract")]
    assert mc.handle(m.IdleLine("greeting")) == []
    assert mc.handle(ButtonDown()) == [StopPlayback(), JawClose(), MicStart(1), SendListen(1), Snapshot(1)]
    assert mc.state is State.LISTENING and not mc.saying
    assert mc.handle(m.IdleLine("attract")) == []  # never during a turn


def test_losing_the_host_cuts_an_idle_line():
    mc = at(State.IDLE)
    mc.handle(m.IdleLine("attract"))
    assert mc.handle(Disconnected()) == [StopPlayback(), JawClose(), Led(m.LedPattern.OFFLINE)]
    assert not mc.saying


def test_button_down_starts_a_turn_mic_first():
    mc = at(State.IDLE)
    assert mc.handle(ButtonDown()) == [MicStart(1), SendListen(1), Snapshot(1)]
    assert mc.state is State.LISTENING and mc.turn == 1


def test_ack_listen_lights_led_and_streams():
    mc = at(State.LISTENING)
    assert mc.handle(AckListen(1)) == [Led(ON), StreamAudio(1)]
    assert mc.state is State.LISTENING


@pytest.mark.parametrize("event, reason", [(ButtonUp(), "released"), (RecordLimit(1), "max_length")])
def test_release_or_length_limit_stops_recording(event, reason):
    mc = at(State.LISTENING)
    assert mc.handle(event) == [MicStop(1), SendStop(1, reason)]
    assert mc.state is State.THINKING


def test_the_host_ending_the_recording_first_moves_on_to_its_answer():
    """The host ends a recording at its max_record_s and answers; its ack may come before the
    skull's own limit does. The skull listens no more, plays the answer and ends the turn."""
    mc = at(State.LISTENING)
    assert mc.handle(AckStop(1)) == [MicStop(1), Led(OFF)]
    assert mc.state is State.THINKING
    assert mc.handle(RecordLimit(1)) == [] and mc.handle(ButtonUp()) == []  # nothing more to stop
    assert mc.handle(SegmentArrived(1, S0)) == [Play(1, S0)]
    mc.handle(HostDone(1))
    assert mc.handle(Drained()) == [JawClose(), Led(OFF), TurnEnd(1, "answered")]


def test_speech_or_done_while_still_listening_is_taken_not_dropped():
    mc = at(State.LISTENING)
    assert mc.handle(SegmentArrived(1, S0)) == [MicStop(1), Play(1, S0)]
    assert mc.state is State.SPEAKING
    mc = at(State.LISTENING)
    assert mc.handle(HostDone(1)) == [MicStop(1), JawClose(), Led(OFF), TurnEnd(1, "no reply")]
    assert mc.state is State.IDLE


def test_ack_stop_turns_led_off():
    mc = at(State.THINKING)
    assert mc.handle(AckStop(1)) == [Led(OFF)]


def test_first_segment_starts_speaking_and_more_are_queued():
    mc = at(State.THINKING)
    assert mc.handle(SegmentArrived(1, S0)) == [Play(1, S0)]
    assert mc.state is State.SPEAKING
    assert mc.handle(SegmentArrived(1, S1)) == [Play(1, S1)]


def test_done_then_drained_ends_the_turn():
    mc = at(State.SPEAKING)
    assert mc.handle(HostDone(1)) == []
    assert mc.handle(Drained()) == [JawClose(), Led(OFF), TurnEnd(1, "answered")]
    assert mc.state is State.IDLE


def test_drained_before_done_waits_for_done():
    mc = at(State.SPEAKING)
    assert mc.handle(Drained()) == []  # the next sentence may still come
    assert mc.state is State.SPEAKING
    assert mc.handle(HostDone(1))[-1] == TurnEnd(1, "answered")


def test_done_without_any_segment_returns_to_idle():
    mc = at(State.THINKING)
    assert mc.handle(HostDone(1))[-1] == TurnEnd(1, "no reply")
    assert mc.state is State.IDLE


def test_reply_timeout_returns_to_idle():
    mc = at(State.THINKING)
    assert mc.handle(ReplyTimeout(1))[-1] == TurnEnd(1, "timeout")
    assert mc.state is State.IDLE


@pytest.mark.parametrize("state", [State.SPEAKING, State.THINKING])
def test_button_while_answering_interrupts(state):
    mc = at(state)
    acts = mc.handle(ButtonDown())
    assert acts == [StopPlayback(), JawClose(), Led(OFF), TurnEnd(1, "interrupted"),
                    MicStart(2), SendListen(2), Snapshot(2)]
    assert mc.state is State.LISTENING and mc.turn == 2


def test_stale_segments_after_interrupt_are_dropped():
    mc = at(State.SPEAKING)
    mc.handle(ButtonDown())
    assert mc.handle(SegmentArrived(1, seg(1, 2, "late"))) == []
    assert mc.handle(HostDone(1)) == []
    assert mc.state is State.LISTENING


@pytest.mark.parametrize("state, first", [(State.LISTENING, [MicStop(1)]), (State.THINKING, []),
                                          (State.SPEAKING, []), (State.IDLE, [])])
def test_disconnect_closes_everything(state, first):
    mc = at(state)
    acts = mc.handle(Disconnected())
    assert acts[:len(first)] == first
    assert acts[len(first):len(first) + 3] == [StopPlayback(), JawClose(), Led(OFFLINE)]
    assert (TurnEnd(1, "disconnected") in acts) == (state is not State.IDLE)
    # a visitor who heard nothing of the answer hears a line of the skull's own, after the turn ended
    heard_nothing = state in (State.LISTENING, State.THINKING)
    assert (acts[-1] == m.PlayLine("offline")) == heard_nothing and acts.count(m.PlayLine("offline")) == heard_nothing
    assert mc.saying is heard_nothing
    assert mc.state is State.OFFLINE
    assert mc.handle(Disconnected()) == []


@pytest.mark.parametrize("state, first", [(State.LISTENING, [MicStop(1)]), (State.THINKING, []),
                                          (State.SPEAKING, [])])
def test_fault_during_a_turn_makes_safe_and_ends_it(state, first):
    mc = at(state)
    acts = mc.handle(Fault("the microphone"))
    assert acts == first + [StopPlayback(), JawClose(), Led(OFF), TurnEnd(1, "failed")]
    assert mc.state is State.IDLE
    assert mc.handle(SegmentArrived(1, S1)) == []  # the failed turn's late sentences stay quiet
    assert mc.handle(ButtonDown()) == [MicStart(2), SendListen(2), Snapshot(2)]  # and the next turn starts


@pytest.mark.parametrize("state, led", [(State.IDLE, OFF), (State.OFFLINE, OFFLINE)])
def test_fault_outside_a_turn_only_makes_safe(state, led):
    mc = at(state)
    assert mc.handle(Fault("the LED")) == [StopPlayback(), JawClose(), Led(led)]
    assert mc.state is state


def test_reconnect_then_next_turn_has_a_new_number():
    mc = at(State.SPEAKING)
    mc.handle(Disconnected())
    mc.handle(Connected())
    assert mc.handle(ButtonDown())[0] == MicStart(2)


@pytest.mark.parametrize("state", [State.IDLE, State.THINKING, State.SPEAKING])
def test_button_up_outside_listening_is_ignored(state):
    mc = at(state)
    assert mc.handle(ButtonUp()) == []
    assert mc.state is state


def test_button_down_while_listening_is_ignored():
    mc = at(State.LISTENING)
    assert mc.handle(ButtonDown()) == []
    assert mc.turn == 1


# --- the operator (the host's dashboard) ------------------------------------------------------

def test_interrupt_stops_a_reply_and_the_turn_ends_interrupted():
    mc = at(State.SPEAKING)
    assert mc.handle(m.Interrupt()) == [StopPlayback(), JawClose(), Led(OFF), TurnEnd(1, "interrupted")]
    assert mc.state is State.IDLE
    assert mc.handle(SegmentArrived(1, S1)) == []  # the host's late sentences stay quiet


def test_interrupt_while_listening_closes_the_mic_too():
    mc = at(State.LISTENING)
    assert mc.handle(m.Interrupt()) == [MicStop(1), StopPlayback(), JawClose(), Led(OFF), TurnEnd(1, "interrupted")]
    assert mc.state is State.IDLE


def test_interrupt_cuts_an_idle_line_and_is_nothing_when_quiet_or_offline():
    mc = at(State.IDLE)
    assert mc.handle(m.Interrupt()) == []
    mc.handle(m.IdleLine("attract"))
    assert mc.handle(m.Interrupt()) == [StopPlayback(), JawClose()]
    assert not mc.saying
    assert at(State.OFFLINE).handle(m.Interrupt()) == []


def test_say_now_cuts_the_reply_and_plays_the_operators_line():
    mc = at(State.SPEAKING)
    assert mc.handle(m.SayNow("puppet")) == [StopPlayback(), JawClose(), Led(OFF), TurnEnd(1, "interrupted"),
                                             m.PlayLine("puppet")]
    assert (mc.state, mc.saying) == (State.IDLE, True)
    assert mc.handle(m.SayNow("puppet")) == [StopPlayback(), JawClose(), m.PlayLine("puppet")]  # cuts its own line
    assert mc.handle(Drained()) == [] and not mc.saying
    assert mc.handle(m.SayNow("puppet")) == [m.PlayLine("puppet")]
    assert at(State.OFFLINE).handle(m.SayNow("puppet")) == []


# --- exhaustive dispatch ----------------------------------------------------------------------

def _one_of_each_event(turn: int):
    return [Connected(), Disconnected(), ButtonDown(), ButtonUp(), RecordLimit(turn), AckListen(turn), AckStop(turn),
            SegmentArrived(turn, seg(turn)), HostDone(turn), Drained(), ReplyTimeout(turn), m.IdleLine("attract"),
            m.Interrupt(), m.SayNow("puppet"), Fault("x")]


def test_every_event_type_is_exercised_here():
    assert {type(e) for e in _one_of_each_event(1)} == set(m.EVENTS)


def test_every_action_the_machine_can_emit_has_an_agent_handler():
    """Drive the machine through every state with every event, two steps deep, and check that
    each action it emits is an Action type the agent has a handler for."""
    from skull.agent import Agent
    emitted = set()
    for state in State:
        for first, second in itertools.product(range(len(m.EVENTS)), repeat=2):
            mc = at(state)
            for k in (first, second):
                for action in mc.handle(_one_of_each_event(mc.turn)[k]):
                    emitted.add(type(action))
    assert emitted <= set(m.ACTIONS), emitted - set(m.ACTIONS)
    assert emitted == set(m.ACTIONS)  # every declared action is reachable too
    missing = [a.__name__ for a in emitted if a not in Agent.HANDLERS]
    assert not missing, f"actions without a handler in Agent.HANDLERS: {missing}"


def test_an_action_type_without_a_handler_fails_at_import():
    """The check the agent module runs when imported: a new action nobody handles is refused."""
    from dataclasses import dataclass

    from skull import agent

    @dataclass(frozen=True)
    class Wave:
        """An action added to the machine without a handler in the agent."""
    saved = m.ACTIONS
    m.ACTIONS = saved + (Wave,)
    try:
        with pytest.raises(TypeError, match="no handler for \\['Wave'\\]"):
            agent._check_handlers()
    finally:
        m.ACTIONS = saved
