// skulljaw-sim: the firmware core served over a pseudo-terminal, so the Python serial driver
// can be tested through pyserial exactly as against a board. It prints the pty's path on its
// first line, then serves until SIGINT/SIGTERM or end of input.
//
// millis() is the host's monotonic clock; the servo, button, LED and EEPROM are simulated.
// The simulator itself is driven on its standard input (one command a line), answering on
// its standard output, so the serial line carries only what a real board would say:
//   B 1 / B 0   press / release the simulated button (debounced by the core as on a board)
//   P           print the simulated servo and LED: "P attached=<0|1> us=<last pulse>
//               max=<largest pulse ever> min=<smallest pulse ever> led=<0|1>"
// Options: --eeprom FILE keeps the limits across runs.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "../skulljaw/src/skulljaw_core.h"

static volatile sig_atomic_t stop = 0;
static void onSignal(int) { stop = 1; }

static uint32_t millisNow() {
  static timespec t0 = {0, 0};
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  if (t0.tv_sec == 0 && t0.tv_nsec == 0) t0 = t;
  return (uint32_t)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
}

struct SimHal : skulljaw::Hal {
  int fd = -1;
  const char *eeprom = nullptr;
  bool attached = false, ledOn = false;
  int us = 0, maxUs = 0, minUs = 0;
  void servoAttach() override { attached = true; }
  void servoDetach() override { attached = false; }
  void servoWriteUs(uint16_t v) override {
    us = v;
    if (maxUs == 0 || v > maxUs) maxUs = v;
    if (minUs == 0 || v < minUs) minUs = v;
  }
  void led(bool on) override { ledOn = on; }
  bool loadLimits(uint16_t &c, uint16_t &o) override {
    if (!eeprom) return false;
    FILE *f = fopen(eeprom, "r");
    if (!f) return false;
    unsigned a, b;
    bool ok = fscanf(f, "%u %u", &a, &b) == 2;
    fclose(f);
    c = (uint16_t)a;
    o = (uint16_t)b;
    return ok;
  }
  void saveLimits(uint16_t c, uint16_t o) override {
    if (!eeprom) return;
    FILE *f = fopen(eeprom, "w");
    if (f) {
      fprintf(f, "%u %u\n", c, o);
      fclose(f);
    }
  }
  void send(const char *line) override {
    std::string s = std::string(line) + "\r\n";  // Serial.println ends lines with CR LF
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = write(fd, s.data() + off, s.size() - off);
      if (n < 0 && errno != EAGAIN && errno != EINTR) return;
      if (n > 0) off += (size_t)n;
    }
  }
};

int main(int argc, char **argv) {
  SimHal hal;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--eeprom") && i + 1 < argc) {
      hal.eeprom = argv[++i];
    } else {
      fprintf(stderr, "usage: skulljaw-sim [--eeprom FILE]\n");
      return 2;
    }
  }
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
    perror("skulljaw-sim: cannot open a pseudo-terminal");
    return 1;
  }
  const char *path = ptsname(master);
  // keep the far end open and raw, so the pty stays usable between clients
  int keep = open(path, O_RDWR | O_NOCTTY);
  termios tio;
  if (keep >= 0 && tcgetattr(keep, &tio) == 0) {
    cfmakeraw(&tio);
    cfsetispeed(&tio, B115200);
    cfsetospeed(&tio, B115200);
    tcsetattr(keep, TCSANOW, &tio);
  }
  signal(SIGINT, onSignal);
  signal(SIGTERM, onSignal);
  printf("%s\n", path);
  fflush(stdout);

  hal.fd = master;
  skulljaw::Core core(hal);
  core.begin(millisNow());
  bool button = false;
  bool stdinOpen = true;
  std::string control;
  while (!stop) {
    pollfd p[2] = {{master, POLLIN, 0}, {0, POLLIN, 0}};
    int r = poll(p, stdinOpen ? 2 : 1, 1);
    core.tick(millisNow(), button);  // catch up first: a command sees the state as of its arrival
    if (r > 0 && (p[0].revents & POLLIN)) {
      char buf[256];
      ssize_t n = read(master, buf, sizeof buf);
      for (ssize_t i = 0; i < n; i++) core.onByte(buf[i], millisNow());
    }
    if (r > 0 && stdinOpen && (p[1].revents & (POLLIN | POLLHUP))) {
      char buf[256];
      ssize_t n = read(0, buf, sizeof buf);
      if (n <= 0) stdinOpen = false;
      for (ssize_t i = 0; i < n; i++) {
        if (buf[i] != '\n') {
          if (buf[i] != '\r') control += buf[i];
          continue;
        }
        if (control == "B 1" || control == "B 0") {
          button = control[2] == '1';
          printf("OK\n");
        } else if (control == "P") {
          printf("P attached=%d us=%d max=%d min=%d led=%d\n", hal.attached ? 1 : 0, hal.us, hal.maxUs, hal.minUs,
                 hal.ledOn ? 1 : 0);
        } else {
          printf("E unknown simulator command; use B 1, B 0 or P\n");
        }
        fflush(stdout);
        control.clear();
      }
    }
    core.tick(millisNow(), button);
  }
  close(master);
  if (keep >= 0) close(keep);
  return 0;
}
