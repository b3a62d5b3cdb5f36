"""rmu/run/signals.py in-process: a signal raises Stopped with 128 + the signal, a keeper
decides instead, a repeated SIGTERM is ignored and a second SIGINT stops at once, and
`deferred()` holds a signal back until its block is done. The CLI cases (training, export,
attack, a real hangup) are in tests/test_faults.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rmu.run import signals
from rmu.run.signals import Stopped


@pytest.fixture(autouse=True)
def handlers():
    previous = {s: signal.getsignal(s) for s in signals.SIGNALS}
    signals.install()
    yield
    signals.keep(None)
    for s, handler in previous.items():
        signal.signal(s, handler)


def send(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs between bytecodes of the main thread


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_command_with_128_plus_the_signal(sig, code):
    with pytest.raises(Stopped) as e:
        send(sig)
    assert e.value.exit_code == code
    assert e.value.sentence() == f"stopped by {signal.Signals(sig).name}; nothing was written"


def test_a_keeper_decides_a_repeated_sigterm_is_ignored_and_a_second_ctrl_c_stops_at_once():
    seen = []
    signals.keep(seen.append)
    send(signal.SIGTERM)
    send(signal.SIGTERM)  # a launcher forwarding the scheduler's signal: already being handled
    assert seen == [signal.SIGTERM]
    with pytest.raises(Stopped) as e:
        send(signal.SIGINT)
    assert e.value.again and e.value.exit_code == 130
    assert e.value.sentence().startswith("stopped at once by a second SIGINT")


def test_deferred_holds_a_signal_until_the_block_is_done():
    done = []
    with pytest.raises(Stopped):
        with signals.deferred():
            send(signal.SIGTERM)
            done.append("renamed")  # not cut in two
    assert done == ["renamed"]
