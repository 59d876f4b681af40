/* Linked into the ThreadSanitizer build of the Criterion suite only.
 *
 * Criterion's runner (BoxFort) maps an arena shared with the test processes
 * it forks at a random address in [0x2000_0000_0000, 0x6000_0000_0000),
 * drawn with rand_r(). Under TSan most of that range is shadow or reserved
 * memory, so the runner usually fails to start ("Could not initialize
 * inheritable arena") or crashes in a forked child. This rand_r() steers the
 * draw into TSan's application range for PIE binaries (0x5500_0000_0000 to
 * 0x5680_0000_0000): 0x2000_0000_0000 + r * 16 MiB with r from 0x364000,
 * one step further on each call so that an address already taken is
 * skipped. Nothing else in the suite calls rand_r(). */
#include <stdlib.h>

int rand_r(unsigned int *seed) {
    unsigned int r = 0x364000u + (*seed)++ % 0x1000u;
    return (int)r;
}
