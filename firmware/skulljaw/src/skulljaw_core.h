// The skull's jaw firmware logic in plain C++: no Arduino headers, so it compiles and is
// unit-tested on the host (make firmware-test) and drives the pty simulator. The sketch
// (skulljaw.ino, one folder up) is a thin shell that gives it millis(), the servo, the button pin, the LED
// and EEPROM through the Hal interface below.
#pragma once
#include <stdint.h>
#include <stddef.h>

#define SKULLJAW_VERSION "1.0.0"

namespace skulljaw {

// What the core needs from the board.
struct Hal {
  virtual void servoAttach() = 0;
  virtual void servoDetach() = 0;
  virtual void servoWriteUs(uint16_t us) = 0;
  virtual void led(bool on) = 0;
  virtual bool loadLimits(uint16_t &closedUs, uint16_t &openUs) = 0;  // false: nothing stored
  virtual void saveLimits(uint16_t closedUs, uint16_t openUs) = 0;
  virtual void send(const char *line) = 0;  // one line out, without the newline
  virtual ~Hal() {}
};

const uint16_t MIN_US = 500, MAX_US = 2500, MIN_SPAN_US = 50;
const uint16_t DEFAULT_CLOSED_US = 1300, DEFAULT_OPEN_US = 1700;
const uint32_t FRAME_MS = 20;        // one servo frame (50 Hz)
const uint32_t DEBOUNCE_MS = 20;
const uint32_t MAX_WATCHDOG_MS = 60000;
const size_t LINE_MAX = 32;

class Core {
 public:
  explicit Core(Hal &hal);
  void begin(uint32_t nowMs);
  // A received byte; a full line is handled at '\n'.
  void onByte(char c, uint32_t nowMs);
  // Handle one command line (without newline); answers through Hal::send.
  void handleLine(const char *line, uint32_t nowMs);
  // Call often: runs servo frames, the watchdog and button debouncing.
  void tick(uint32_t nowMs, bool buttonDown);

  // State, for the status line and tests.
  uint16_t closedUs() const { return closedUs_; }
  uint16_t openUs() const { return openUs_; }
  uint16_t position() const { return pos_; }   // permille of the calibrated travel
  uint16_t target() const { return target_; }
  bool attached() const { return attached_; }
  bool ledOn() const { return led_; }
  bool button() const { return stable_; }
  uint16_t pulseUs() const { return usFor(pos_); }
  uint32_t watchdogMs() const { return watchdogMs_; }
  uint16_t slew() const { return slew_; }

 private:
  uint16_t usFor(uint16_t permille) const;
  void frame(uint32_t nowMs);
  void setLed(bool on);
  void fail(const char *reason);
  Hal &hal_;
  uint16_t closedUs_, openUs_;
  uint16_t pos_ = 0, target_ = 0, slew_ = 0;
  bool attached_ = false, led_ = false;
  bool detachAfterFrame_ = false;
  uint32_t watchdogMs_ = 0, lastCommandMs_ = 0, lastFrameMs_ = 0;
  bool watchdogFired_ = false;
  bool raw_ = false, stable_ = false;
  uint32_t rawSinceMs_ = 0;
  char buf_[LINE_MAX + 1];
  size_t len_ = 0;
  bool overflow_ = false;
};

}  // namespace skulljaw
