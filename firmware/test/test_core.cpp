// Unit tests of the firmware core on the host: make firmware-test.
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "../skulljaw/src/skulljaw_core.h"

using skulljaw::Core;

struct FakeHal : skulljaw::Hal {
  bool attached = false, ledOn = false;
  int lastUs = -1;
  std::vector<int> pulses;  // every pulse written while attached or about to attach
  std::vector<std::string> out;
  bool stored = false;
  uint16_t storedC = 0, storedO = 0;
  void servoAttach() override { attached = true; }
  void servoDetach() override { attached = false; }
  void servoWriteUs(uint16_t us) override { lastUs = us; pulses.push_back(us); }
  void led(bool on) override { ledOn = on; }
  bool loadLimits(uint16_t &c, uint16_t &o) override {
    if (!stored) return false;
    c = storedC;
    o = storedO;
    return true;
  }
  void saveLimits(uint16_t c, uint16_t o) override { stored = true, storedC = c, storedO = o; }
  void send(const char *line) override { out.push_back(line); }
  std::string last() const { return out.empty() ? "" : out.back(); }
};

static int failures = 0, checks = 0;
#define CHECK(cond)                                                         \
  do {                                                                      \
    checks++;                                                               \
    if (!(cond)) {                                                          \
      failures++;                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                       \
  } while (0)

static std::string say(Core &core, FakeHal &hal, const char *line, uint32_t now = 0) {
  hal.out.clear();
  core.handleLine(line, now);
  return hal.last();
}

static void test_version_and_status() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  CHECK(say(core, hal, "?") == "SKULLJAW " SKULLJAW_VERSION);
  CHECK(say(core, hal, "S").rfind("S pos=0 target=0 us=1300 attached=0 led=0 button=0 closed=1300 open=1700", 0) == 0);
  CHECK(!hal.attached && !hal.ledOn);
}

static void test_limits_are_never_exceeded() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  CHECK(say(core, hal, "L 1100 1800") == "OK");
  CHECK(say(core, hal, "J 1000") == "OK");
  CHECK(hal.attached && hal.lastUs == 1800);
  CHECK(say(core, hal, "J 2000").rfind("E ", 0) == 0);
  CHECK(core.target() == 1000 && hal.lastUs == 1800);  // nothing changed
  const char *limits[] = {"L 1100 1800", "L 2000 1000", "L 500 2500", "L 1500 1550"};
  for (const char *l : limits) {
    CHECK(say(core, hal, l) == "OK");
    int lo = core.closedUs() < core.openUs() ? core.closedUs() : core.openUs();
    int hi = core.closedUs() < core.openUs() ? core.openUs() : core.closedUs();
    for (int j = 0; j <= 1000; j += 7) {
      char cmd[16];
      snprintf(cmd, sizeof cmd, "J %d", j);
      CHECK(say(core, hal, cmd) == "OK");
    }
    for (int us : hal.pulses) CHECK(us >= 500 && us <= 2500);
    CHECK(hal.lastUs >= lo && hal.lastUs <= hi);
    hal.pulses.clear();
  }
  CHECK(say(core, hal, "L 2000 1000") == "OK");
  CHECK(say(core, hal, "J 0") == "OK" && hal.lastUs == 2000);  // reversed servo: closed is the larger pulse
  CHECK(say(core, hal, "J 1000") == "OK" && hal.lastUs == 1000);
}

static void test_bad_lines_change_nothing() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  say(core, hal, "J 400");
  const char *bad[] = {"J", "J -1", "J 1.5", "J 10 20", "J abc", "Jx 10", "L 400 1800", "L 1500 1520",
                       "L 1500", "V -3", "W 10", "W 70000", "O 2", "D 1", "X", "hello", "S 1", "? 3"};
  for (const char *b : bad) {
    std::string got = say(core, hal, b);
    CHECK(got.rfind("E ", 0) == 0);
    if (got.rfind("E ", 0) != 0) fprintf(stderr, "  line %s answered %s\n", b, got.c_str());
  }
  CHECK(core.target() == 400 && core.closedUs() == 1300 && core.openUs() == 1700 && core.watchdogMs() == 0);
  CHECK(!hal.stored);
  // a line longer than the buffer is refused as a whole
  hal.out.clear();
  for (int i = 0; i < 40; i++) core.onByte('9', 0);
  core.onByte('\n', 0);
  CHECK(hal.last() == "E line too long");
  hal.out.clear();
  for (const char *c = "J 5\r\n"; *c; c++) core.onByte(*c, 0);
  CHECK(hal.last() == "OK" && core.target() == 5);
}

static void test_watchdog_closes_then_detaches() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  say(core, hal, "W 300", 0);
  say(core, hal, "O 1", 0);
  say(core, hal, "J 800", 0);
  for (uint32_t t = 1; t < 300; t++) core.tick(t, false);
  CHECK(hal.attached && core.position() == 800);
  core.tick(300, false);
  CHECK(core.position() == 0 && hal.lastUs == 1300 && !hal.ledOn && hal.last() == "X watchdog");
  for (uint32_t t = 301; t <= 320; t++) core.tick(t, false);
  CHECK(!hal.attached && !core.attached());
  CHECK(say(core, hal, "S", 320).find("pos=0 target=0 us=1300 attached=0 led=0") != std::string::npos);
  // a late tick (a busy loop) still closes and detaches as of the due time
  FakeHal hal2;
  Core late(hal2);
  late.begin(0);
  say(late, hal2, "W 300", 0);
  say(late, hal2, "J 900", 0);
  late.tick(500, false);
  CHECK(!hal2.attached && late.position() == 0 && hal2.lastUs == 1300);
  // a command feeds it again
  say(core, hal, "J 100", 400);
  for (uint32_t t = 401; t < 700; t++) core.tick(t, false);
  CHECK(hal.attached);
}

static void test_slew_limit() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  say(core, hal, "V 1000");
  say(core, hal, "J 1000");
  uint32_t t = 0;
  while (core.position() < 1000 && t < 5000) core.tick(++t, false);
  CHECK(t >= 980 && t <= 1020);  // 1000 permille at 1000 permille/s
  for (size_t i = 1; i < hal.pulses.size(); i++) CHECK(hal.pulses[i] - hal.pulses[i - 1] <= 8);
}

static void test_button_is_debounced() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  uint32_t t = 0;
  for (int i = 0; i < 5; i++) {  // chatter shorter than the debounce time
    core.tick(++t, true);
    t += 5;
    core.tick(t, false);
  }
  CHECK(hal.out.empty());
  for (int i = 0; i < 25; i++) core.tick(++t, true);
  CHECK(hal.out.size() == 1 && hal.last() == "B 1" && core.button());
  for (int i = 0; i < 25; i++) core.tick(++t, false);
  CHECK(hal.last() == "B 0" && !core.button());
}

static void test_limits_persist_and_bad_storage_is_ignored() {
  FakeHal hal;
  {
    Core core(hal);
    core.begin(0);
    say(core, hal, "L 1200 1750");
  }
  Core again(hal);
  again.begin(0);
  CHECK(again.closedUs() == 1200 && again.openUs() == 1750);
  hal.storedC = 9000;  // garbage in EEPROM
  Core third(hal);
  third.begin(0);
  CHECK(third.closedUs() == 1300 && third.openUs() == 1700);
}

static void test_detach_and_led() {
  FakeHal hal;
  Core core(hal);
  core.begin(0);
  say(core, hal, "J 500");
  CHECK(hal.attached);
  CHECK(say(core, hal, "D") == "OK" && !hal.attached);
  CHECK(say(core, hal, "O 1") == "OK" && hal.ledOn);
  CHECK(say(core, hal, "O 0") == "OK" && !hal.ledOn);
}

int main() {
  test_version_and_status();
  test_limits_are_never_exceeded();
  test_bad_lines_change_nothing();
  test_watchdog_closes_then_detaches();
  test_slew_limit();
  test_button_is_debounced();
  test_limits_persist_and_bad_storage_is_ignored();
  test_detach_and_led();
  printf("firmware core: %d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
