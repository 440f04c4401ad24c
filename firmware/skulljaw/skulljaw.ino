// SKULLJAW firmware for Uno/Nano-class boards: the skull's jaw servo, button and LED over USB
// serial (115200 baud, one ASCII command per line; see firmware/README.md). All logic is in
// src/skulljaw_core.cpp, which is unit-tested on a PC; this file only wires it to the board.
#include <EEPROM.h>
#include <Servo.h>

#include "src/skulljaw_core.h"

const uint8_t SERVO_PIN = 9;
const uint8_t BUTTON_PIN = 2;   // to ground; internal pull-up
const uint8_t LED_PIN = 13;     // or an LED with a 330 ohm resistor on another pin
const int EEPROM_ADDR = 0;
const uint16_t EEPROM_MAGIC = 0x534A;  // "SJ": limits were stored by this firmware

struct BoardHal : skulljaw::Hal {
  Servo servo;
  void servoAttach() override { servo.attach(SERVO_PIN, skulljaw::MIN_US, skulljaw::MAX_US); }
  void servoDetach() override { servo.detach(); }
  void servoWriteUs(uint16_t us) override { servo.writeMicroseconds(us); }
  void led(bool on) override { digitalWrite(LED_PIN, on ? HIGH : LOW); }
  bool loadLimits(uint16_t &c, uint16_t &o) override {
    uint16_t magic;
    EEPROM.get(EEPROM_ADDR, magic);
    if (magic != EEPROM_MAGIC) return false;
    EEPROM.get(EEPROM_ADDR + 2, c);
    EEPROM.get(EEPROM_ADDR + 4, o);
    return true;
  }
  void saveLimits(uint16_t c, uint16_t o) override {
    EEPROM.put(EEPROM_ADDR, EEPROM_MAGIC);
    EEPROM.put(EEPROM_ADDR + 2, c);
    EEPROM.put(EEPROM_ADDR + 4, o);
  }
  void send(const char *line) override { Serial.println(line); }
};

BoardHal hal;
skulljaw::Core core(hal);

void setup() {
  pinMode(BUTTON_PIN, INPUT_PULLUP);
  pinMode(LED_PIN, OUTPUT);
  Serial.begin(115200);
  core.begin(millis());
}

void loop() {
  while (Serial.available() > 0) core.onByte((char)Serial.read(), millis());
  core.tick(millis(), digitalRead(BUTTON_PIN) == LOW);
}
