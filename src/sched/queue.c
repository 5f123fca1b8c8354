/*
 * Intrusive FIFO with priority levels and an intrusive binary min-heap.
 */
#include "queue.h"

#include <stdlib.h>

#include "../common/common.h"

void bt_queue_init(struct bt_queue *q, int levels, size_t max)
{
	BT_ASSERT(levels >= 1 && levels <= BT_QUEUE_MAX_LEVELS);
	q->levels = levels;
	q->len = 0;
	q->max = max;
	for (int i = 0; i < BT_QUEUE_MAX_LEVELS; i++) {
		q->heads[i].prev = q->heads[i].next = &q->heads[i];
		q->heads[i].level = i;
	}
}

void bt_qlink_init(struct bt_qlink *l)
{
	l->prev = l->next = NULL;
	l->level = -1;
}

static void link_between(struct bt_qlink *l, struct bt_qlink *prev,
			 struct bt_qlink *next)
{
	l->prev = prev;
	l->next = next;
	prev->next = l;
	next->prev = l;
}

static int clamp_level(const struct bt_queue *q, int level)
{
	if (level < 0)
		return 0;
	return level >= q->levels ? q->levels - 1 : level;
}

int bt_queue_push(struct bt_queue *q, struct bt_qlink *l, int level)
{
	BT_ASSERT(!bt_qlink_queued(l));
	if (q->max && q->len >= q->max)
		return BT_EFULL;
	level = clamp_level(q, level);
	struct bt_qlink *h = &q->heads[level];
	link_between(l, h->prev, h);
	l->level = level;
	q->len++;
	return 0;
}

void bt_queue_push_front(struct bt_queue *q, struct bt_qlink *l, int level)
{
	BT_ASSERT(!bt_qlink_queued(l));
	level = clamp_level(q, level);
	struct bt_qlink *h = &q->heads[level];
	link_between(l, h, h->next);
	l->level = level;
	q->len++;
}

struct bt_qlink *bt_queue_level_head(const struct bt_queue *q, int level)
{
	const struct bt_qlink *h = &q->heads[level];
	return h->next != h ? h->next : NULL;
}

struct bt_qlink *bt_queue_peek(const struct bt_queue *q)
{
	if (q->len == 0)
		return NULL;
	for (int i = 0; i < q->levels; i++) {
		const struct bt_qlink *h = &q->heads[i];
		if (h->next != h)
			return h->next;
	}
	BT_ASSERT(!"queue length and lists disagree");
	return NULL;
}

void bt_queue_remove(struct bt_queue *q, struct bt_qlink *l)
{
	BT_ASSERT(bt_qlink_queued(l) && q->len > 0);
	l->prev->next = l->next;
	l->next->prev = l->prev;
	bt_qlink_init(l);
	q->len--;
}

struct bt_qlink *bt_queue_pop(struct bt_queue *q)
{
	struct bt_qlink *l = bt_queue_peek(q);
	if (l)
		bt_queue_remove(q, l);
	return l;
}

void bt_heap_init(struct bt_heap *h)
{
	h->nodes = NULL;
	h->len = h->cap = 0;
}

void bt_heap_release(struct bt_heap *h)
{
	free(h->nodes);
	bt_heap_init(h);
}

void bt_heap_node_init(struct bt_heap_node *n)
{
	n->key = 0;
	n->index = SIZE_MAX;
}

static void place(struct bt_heap *h, size_t i, struct bt_heap_node *n)
{
	h->nodes[i] = n;
	n->index = i;
}

static void sift_up(struct bt_heap *h, size_t i)
{
	struct bt_heap_node *n = h->nodes[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (h->nodes[parent]->key <= n->key)
			break;
		place(h, i, h->nodes[parent]);
		i = parent;
	}
	place(h, i, n);
}

static void sift_down(struct bt_heap *h, size_t i)
{
	struct bt_heap_node *n = h->nodes[i];
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= h->len)
			break;
		if (child + 1 < h->len &&
		    h->nodes[child + 1]->key < h->nodes[child]->key)
			child++;
		if (n->key <= h->nodes[child]->key)
			break;
		place(h, i, h->nodes[child]);
		i = child;
	}
	place(h, i, n);
}

void bt_heap_insert(struct bt_heap *h, struct bt_heap_node *n, uint64_t key)
{
	BT_ASSERT(!bt_heap_contains(n));
	if (h->len == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 64;
		h->nodes = bt_realloc(h->nodes, h->cap * sizeof(*h->nodes));
	}
	n->key = key;
	place(h, h->len++, n);
	sift_up(h, n->index);
}

void bt_heap_remove(struct bt_heap *h, struct bt_heap_node *n)
{
	BT_ASSERT(bt_heap_contains(n) && h->nodes[n->index] == n);
	size_t i = n->index;
	struct bt_heap_node *last = h->nodes[--h->len];
	n->index = SIZE_MAX;
	if (last == n)
		return;
	place(h, i, last);
	if (i > 0 && h->nodes[(i - 1) / 2]->key > last->key)
		sift_up(h, i);
	else
		sift_down(h, i);
}

void bt_heap_update(struct bt_heap *h, struct bt_heap_node *n, uint64_t key)
{
	if (bt_heap_contains(n))
		bt_heap_remove(h, n);
	bt_heap_insert(h, n, key);
}

struct bt_heap_node *bt_heap_min(const struct bt_heap *h)
{
	return h->len ? h->nodes[0] : NULL;
}
