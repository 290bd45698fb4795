// The emulator's unit tests run one process per test case; each configures the
// simulated devices before its first cuInit (the environment wins when set).
#include <cstdlib>

#include <catch2/catch_session.hpp>

int main(int argc, char** argv) {
  setenv("FERRY_EMU_KERNELS", FERRY_TEST_KERNEL_DIR, 0);
  setenv("FERRY_EMU_DEVICES", "3", 0);
  setenv("FERRY_EMU_MEMORY", "1G", 0);
  setenv("FERRY_EMU_DEVICE1",
         "name=Test GPU one,memory=512M,cc=8.0,sms=108,uuid=00112233445566778899aabbccddeeff,pci=0000:3b:00.0", 0);
  return Catch::Session().run(argc, argv);
}
