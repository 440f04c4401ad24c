// See skulljaw_core.h. Every command line gets exactly one answer line: the version, the
// status, "OK", or "E <reason>" (and then nothing changed). Events: "B 1"/"B 0" when the
// debounced button changes, "X watchdog" when the watchdog has shut the jaw.
#include "skulljaw_core.h"

#include <stdio.h>
#include <string.h>

namespace skulljaw {

namespace {

bool validLimits(uint16_t c, uint16_t o) {
  if (c < MIN_US || c > MAX_US || o < MIN_US || o > MAX_US) return false;
  uint16_t span = c > o ? c - o : o - c;
  return span >= MIN_SPAN_US;
}

// Parses up to `want` unsigned decimal numbers after the command letter. Returns how many
// were found, or -1 when something else is in the line (a sign, a letter, a fraction...).
int parseNumbers(const char *s, uint32_t *out, int want) {
  int n = 0;
  while (*s) {
    while (*s == ' ') s++;
    if (!*s) break;
    if (*s < '0' || *s > '9' || n == want) return -1;
    uint32_t v = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9') {
      if (++digits > 6) return -1;  // no value we take has more than 6 digits
      v = v * 10 + (uint32_t)(*s - '0');
      s++;
    }
    if (*s && *s != ' ') return -1;
    out[n++] = v;
  }
  return n;
}

}  // namespace

Core::Core(Hal &hal) : hal_(hal), closedUs_(DEFAULT_CLOSED_US), openUs_(DEFAULT_OPEN_US) { buf_[0] = 0; }

void Core::begin(uint32_t nowMs) {
  uint16_t c, o;
  if (hal_.loadLimits(c, o) && validLimits(c, o)) {
    closedUs_ = c;
    openUs_ = o;
  }
  lastCommandMs_ = lastFrameMs_ = nowMs;
  setLed(false);
  hal_.servoDetach();
  attached_ = false;
}

uint16_t Core::usFor(uint16_t permille) const {
  if (permille > 1000) permille = 1000;
  int32_t us = (int32_t)closedUs_ + ((int32_t)openUs_ - (int32_t)closedUs_) * (int32_t)permille / 1000;
  int32_t lo = closedUs_ < openUs_ ? closedUs_ : openUs_;
  int32_t hi = closedUs_ < openUs_ ? openUs_ : closedUs_;
  if (us < lo) us = lo;
  if (us > hi) us = hi;
  return (uint16_t)us;
}

void Core::setLed(bool on) {
  led_ = on;
  hal_.led(on);
}

void Core::fail(const char *reason) {
  char line[64];
  snprintf(line, sizeof line, "E %s", reason);
  hal_.send(line);
}

void Core::onByte(char c, uint32_t nowMs) {
  if (c == '\r') return;
  if (c == '\n') {
    buf_[len_] = 0;
    if (overflow_) {
      fail("line too long");
    } else {
      handleLine(buf_, nowMs);
    }
    len_ = 0;
    overflow_ = false;
    return;
  }
  if (len_ >= LINE_MAX) {
    overflow_ = true;
    return;
  }
  buf_[len_++] = c;
}

void Core::handleLine(const char *line, uint32_t nowMs) {
  while (*line == ' ') line++;
  size_t n = strlen(line);
  while (n && (line[n - 1] == ' ' || line[n - 1] == '\r')) n--;
  if (n == 0) return;
  char cmd[LINE_MAX + 1];
  if (n > LINE_MAX) {
    fail("line too long");
    return;
  }
  memcpy(cmd, line, n);
  cmd[n] = 0;
  if (n > 1 && cmd[1] != ' ') {
    fail("unknown command; send ? J L V W D S O");
    return;
  }
  uint32_t v[2];
  const char *args = cmd + 1;
  int count = parseNumbers(args, v, 2);
  char out[128];
  switch (cmd[0]) {
    case '?':
      if (count != 0) return fail("? takes no value");
      hal_.send("SKULLJAW " SKULLJAW_VERSION);
      break;
    case 'J':
      if (count != 1 || v[0] > 1000) return fail("J needs one whole number 0..1000");
      target_ = (uint16_t)v[0];
      detachAfterFrame_ = false;
      if (!attached_) {
        hal_.servoWriteUs(usFor(pos_));
        hal_.servoAttach();
        attached_ = true;
      }
      if (slew_ == 0) {
        pos_ = target_;
        hal_.servoWriteUs(usFor(pos_));
      }
      hal_.send("OK");
      break;
    case 'L':
      if (count != 2 || !validLimits((uint16_t)v[0], (uint16_t)v[1]))
        return fail("L needs closed_us open_us, each 500..2500, at least 50 apart");
      if (closedUs_ != v[0] || openUs_ != v[1]) hal_.saveLimits((uint16_t)v[0], (uint16_t)v[1]);
      closedUs_ = (uint16_t)v[0];
      openUs_ = (uint16_t)v[1];
      if (attached_) hal_.servoWriteUs(usFor(pos_));
      hal_.send("OK");
      break;
    case 'V':
      if (count != 1 || v[0] > 100000) return fail("V needs permille per second 0..100000 (0: no limit)");
      slew_ = (uint16_t)(v[0] > 65535 ? 65535 : v[0]);
      hal_.send("OK");
      break;
    case 'W':
      if (count != 1 || (v[0] != 0 && (v[0] < 50 || v[0] > MAX_WATCHDOG_MS)))
        return fail("W needs 0 (off) or 50..60000 ms");
      watchdogMs_ = v[0];
      hal_.send("OK");
      break;
    case 'D':
      if (count != 0) return fail("D takes no value");
      if (attached_) hal_.servoDetach();
      attached_ = detachAfterFrame_ = false;
      hal_.send("OK");
      break;
    case 'O':
      if (count != 1 || v[0] > 1) return fail("O needs 0 or 1");
      setLed(v[0] == 1);
      hal_.send("OK");
      break;
    case 'S':
      if (count != 0) return fail("S takes no value");
      snprintf(out, sizeof out, "S pos=%u target=%u us=%u attached=%d led=%d button=%d closed=%u open=%u slew=%u wd=%lu",
               (unsigned)pos_, (unsigned)target_, (unsigned)usFor(pos_), attached_ ? 1 : 0, led_ ? 1 : 0,
               stable_ ? 1 : 0, (unsigned)closedUs_, (unsigned)openUs_, (unsigned)slew_, (unsigned long)watchdogMs_);
      hal_.send(out);
      break;
    default:
      return fail("unknown command; send ? J L V W D S O");
  }
  lastCommandMs_ = nowMs;  // any good command feeds the watchdog
  watchdogFired_ = false;
}

void Core::frame(uint32_t) {
  if (detachAfterFrame_) {  // the closing pulse has had its frame: now go limp
    hal_.servoDetach();
    attached_ = detachAfterFrame_ = false;
    return;
  }
  if (!attached_ || pos_ == target_) return;
  uint32_t step = slew_ == 0 ? 1000 : (uint32_t)slew_ * FRAME_MS / 1000;
  if (step == 0) step = 1;
  if (pos_ < target_) {
    pos_ = (uint16_t)((uint32_t)target_ - pos_ <= step ? target_ : pos_ + step);
  } else {
    pos_ = (uint16_t)((uint32_t)pos_ - target_ <= step ? target_ : pos_ - step);
  }
  hal_.servoWriteUs(usFor(pos_));
}

void Core::tick(uint32_t nowMs, bool buttonDown) {
  if (buttonDown != raw_) {
    raw_ = buttonDown;
    rawSinceMs_ = nowMs;
  }
  if (raw_ != stable_ && nowMs - rawSinceMs_ >= DEBOUNCE_MS) {
    stable_ = raw_;
    hal_.send(stable_ ? "B 1" : "B 0");
  }
  if (watchdogMs_ && !watchdogFired_ && nowMs - lastCommandMs_ >= watchdogMs_) {
    watchdogFired_ = true;
    target_ = pos_ = 0;
    setLed(false);
    if (attached_) {  // one frame of the closing pulse, then detach
      hal_.servoWriteUs(usFor(0));
      detachAfterFrame_ = true;
      // frames count from when the watchdog was due, so a late tick catches up at once
      lastFrameMs_ = lastCommandMs_ + watchdogMs_;
    }
    hal_.send("X watchdog");
  }
  if (nowMs - lastFrameMs_ >= FRAME_MS) {
    lastFrameMs_ = nowMs - lastFrameMs_ >= 2 * FRAME_MS ? nowMs : lastFrameMs_ + FRAME_MS;
    frame(nowMs);
  }
}

}  // namespace skulljaw
