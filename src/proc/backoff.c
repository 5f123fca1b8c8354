/*
 * The restart delay schedule, kept apart from the supervisor so that unit
 * tests can check it without processes.
 */
#include "proc.h"

uint64_t bt_backoff_delay_ms(uint64_t base, uint64_t max, int failures)
{
	if (failures < 1)
		failures = 1;
	uint64_t delay = base;
	for (int i = 1; i < failures && delay > 0 && delay < max; i++)
		delay = delay > max / 2 ? max : delay * 2;
	return delay < max ? delay : max;
}
