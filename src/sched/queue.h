/*
 * The pure containers of the scheduler: a bounded FIFO with priority levels
 * and a min-heap of deadlines.  Both are intrusive (the links live in the
 * element) so every operation is O(1) or O(log n) and allocates nothing.
 * No libuv here; tests/unit/test_queue.c drives them directly.
 */
#ifndef BT_SCHED_QUEUE_H
#define BT_SCHED_QUEUE_H

#include <stddef.h>
#include <stdint.h>

struct bt_qlink {
	struct bt_qlink *prev, *next;
	int level; /* priority level it sits in, -1 when not queued */
};

#define BT_QUEUE_MAX_LEVELS 16

struct bt_queue {
	struct bt_qlink heads[BT_QUEUE_MAX_LEVELS]; /* circular, sentinel */
	int levels; /* level 0 is served first */
	size_t len;
	size_t max; /* bound checked by bt_queue_push, 0 = unbounded */
};

void bt_queue_init(struct bt_queue *q, int levels, size_t max);
void bt_qlink_init(struct bt_qlink *l);
/* Appends at the tail of level; BT_EFULL when the bound is reached. */
int bt_queue_push(struct bt_queue *q, struct bt_qlink *l, int level);
/*
 * Puts at the head of level, ignoring the bound: for requests that were
 * already accepted and come back (a retry), which must never be refused.
 */
void bt_queue_push_front(struct bt_queue *q, struct bt_qlink *l, int level);
/* The oldest element of one level, or NULL. */
struct bt_qlink *bt_queue_level_head(const struct bt_queue *q, int level);
/* The oldest element of the best non-empty level, or NULL. */
struct bt_qlink *bt_queue_peek(const struct bt_queue *q);
struct bt_qlink *bt_queue_pop(struct bt_queue *q);
/* Removes an element that is in the queue. */
void bt_queue_remove(struct bt_queue *q, struct bt_qlink *l);
static inline int bt_qlink_queued(const struct bt_qlink *l)
{
	return l->level >= 0;
}

struct bt_heap_node {
	uint64_t key;
	size_t index; /* position in the heap, SIZE_MAX when not in it */
};

struct bt_heap {
	struct bt_heap_node **nodes;
	size_t len, cap;
};

void bt_heap_init(struct bt_heap *h);
void bt_heap_release(struct bt_heap *h);
void bt_heap_node_init(struct bt_heap_node *n);
void bt_heap_insert(struct bt_heap *h, struct bt_heap_node *n, uint64_t key);
void bt_heap_remove(struct bt_heap *h, struct bt_heap_node *n);
/* Changes the key of a node in the heap (or inserts it). */
void bt_heap_update(struct bt_heap *h, struct bt_heap_node *n, uint64_t key);
struct bt_heap_node *bt_heap_min(const struct bt_heap *h);
static inline int bt_heap_contains(const struct bt_heap_node *n)
{
	return n->index != SIZE_MAX;
}

#define bt_container_of(ptr, type, member)                                     \
	((type *)((char *)(ptr) - offsetof(type, member)))

#endif
