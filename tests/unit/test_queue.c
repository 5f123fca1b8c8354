/*
 * Unit tests of the scheduler's pure containers (src/sched/queue.h): the
 * bounded FIFO with priority levels and the intrusive min-heap of deadlines.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "common/common.h"
#include "sched/queue.h"

TestSuite(queue, .timeout = 20);
TestSuite(heap, .timeout = 20);

struct item {
	int id;
	struct bt_qlink link;
	struct bt_heap_node node;
};

static void items_init(struct item *it, int n)
{
	for (int i = 0; i < n; i++) {
		it[i].id = i;
		bt_qlink_init(&it[i].link);
		bt_heap_node_init(&it[i].node);
	}
}

static int pop_id(struct bt_queue *q)
{
	struct bt_qlink *l = bt_queue_pop(q);
	return l ? bt_container_of(l, struct item, link)->id : -1;
}

static int peek_id(const struct bt_queue *q)
{
	struct bt_qlink *l = bt_queue_peek(q);
	return l ? bt_container_of(l, struct item, link)->id : -1;
}

/* Pops everything and checks the order against want (n ids). */
static void expect_order(struct bt_queue *q, const int *want, int n)
{
	for (int i = 0; i < n; i++) {
		int got = pop_id(q);
		cr_assert_eq(got, want[i], "position %d: got item %d, want %d", i, got,
			     want[i]);
	}
	cr_assert_eq(q->len, 0);
	cr_assert_null(bt_queue_pop(q), "queue not empty after %d pops", n);
}

Test(queue, pop_returns_elements_in_fifo_order)
{
	struct bt_queue q;
	struct item it[5];
	items_init(it, 5);
	bt_queue_init(&q, 1, 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(bt_queue_push(&q, &it[i].link, 0), 0);
	cr_assert_eq(q.len, 5);
	const int want[] = {0, 1, 2, 3, 4};
	expect_order(&q, want, 5);
}

Test(queue, peek_on_empty_returns_null)
{
	struct bt_queue q;
	bt_queue_init(&q, 4, 10);
	cr_assert_null(bt_queue_peek(&q));
	cr_assert_null(bt_queue_pop(&q));
	cr_assert_eq(q.len, 0);
}

Test(queue, peek_returns_the_head_without_removing_it)
{
	struct bt_queue q;
	struct item it[2];
	items_init(it, 2);
	bt_queue_init(&q, 1, 0);
	bt_queue_push(&q, &it[0].link, 0);
	bt_queue_push(&q, &it[1].link, 0);
	cr_assert_eq(peek_id(&q), 0);
	cr_assert_eq(peek_id(&q), 0);
	cr_assert_eq(q.len, 2);
	cr_assert(bt_qlink_queued(&it[0].link));
}

Test(queue, queued_flag_follows_push_and_pop)
{
	struct bt_queue q;
	struct item it[1];
	items_init(it, 1);
	bt_queue_init(&q, 1, 0);
	cr_assert_not(bt_qlink_queued(&it[0].link));
	bt_queue_push(&q, &it[0].link, 0);
	cr_assert(bt_qlink_queued(&it[0].link));
	bt_queue_pop(&q);
	cr_assert_not(bt_qlink_queued(&it[0].link));
	/* A popped element can be queued again. */
	cr_assert_eq(bt_queue_push(&q, &it[0].link, 0), 0);
	cr_assert_eq(pop_id(&q), 0);
}

Test(queue, push_beyond_the_bound_returns_efull_and_changes_nothing)
{
	struct bt_queue q;
	struct item it[4];
	items_init(it, 4);
	bt_queue_init(&q, 2, 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(bt_queue_push(&q, &it[i].link, i % 2), 0);
	cr_assert_eq(bt_queue_push(&q, &it[3].link, 0), BT_EFULL);
	cr_assert_eq(bt_queue_push(&q, &it[3].link, 1), BT_EFULL);
	cr_assert_eq(q.len, 3);
	cr_assert_not(bt_qlink_queued(&it[3].link));
	/* Room again after a pop. */
	cr_assert_eq(pop_id(&q), 0);
	cr_assert_eq(bt_queue_push(&q, &it[3].link, 0), 0);
	const int want[] = {2, 3, 1};
	expect_order(&q, want, 3);
}

Test(queue, max_zero_means_unbounded)
{
	enum { N = 5000 };
	struct bt_queue q;
	struct item *it = calloc(N, sizeof(*it));
	cr_assert_not_null(it);
	items_init(it, N);
	bt_queue_init(&q, 1, 0);
	for (int i = 0; i < N; i++)
		cr_assert_eq(bt_queue_push(&q, &it[i].link, 0), 0, "push %d refused", i);
	cr_assert_eq(q.len, N);
	for (int i = 0; i < N; i++)
		cr_assert_eq(pop_id(&q), i);
	free(it);
}

Test(queue, push_front_ignores_the_bound_and_goes_first)
{
	struct bt_queue q;
	struct item it[3];
	items_init(it, 3);
	bt_queue_init(&q, 1, 2);
	bt_queue_push(&q, &it[0].link, 0);
	bt_queue_push(&q, &it[1].link, 0);
	cr_assert_eq(bt_queue_push(&q, &it[2].link, 0), BT_EFULL);
	bt_queue_push_front(&q, &it[2].link, 0);
	cr_assert_eq(q.len, 3);
	cr_assert(bt_qlink_queued(&it[2].link));
	const int want[] = {2, 0, 1};
	expect_order(&q, want, 3);
}

Test(queue, push_front_goes_to_the_head_of_its_own_level_only)
{
	struct bt_queue q;
	struct item it[4];
	items_init(it, 4);
	bt_queue_init(&q, 3, 0);
	bt_queue_push(&q, &it[0].link, 0);
	bt_queue_push(&q, &it[1].link, 2);
	bt_queue_push(&q, &it[2].link, 2);
	bt_queue_push_front(&q, &it[3].link, 2);
	const int want[] = {0, 3, 1, 2};
	expect_order(&q, want, 4);
}

Test(queue, level_zero_is_served_before_level_one_and_fifo_within_a_level)
{
	struct bt_queue q;
	struct item it[8];
	items_init(it, 8);
	bt_queue_init(&q, 3, 0);
	const int level[8] = {2, 1, 0, 2, 1, 0, 1, 2};
	for (int i = 0; i < 8; i++)
		cr_assert_eq(bt_queue_push(&q, &it[i].link, level[i]), 0);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(it[i].link.level, level[i]);
	const int want[] = {2, 5, 1, 4, 6, 0, 3, 7};
	expect_order(&q, want, 8);
}

Test(queue, a_late_better_level_element_overtakes_waiting_ones)
{
	struct bt_queue q;
	struct item it[3];
	items_init(it, 3);
	bt_queue_init(&q, 2, 0);
	bt_queue_push(&q, &it[0].link, 1);
	bt_queue_push(&q, &it[1].link, 1);
	cr_assert_eq(pop_id(&q), 0);
	bt_queue_push(&q, &it[2].link, 0);
	cr_assert_eq(peek_id(&q), 2);
	const int want[] = {2, 1};
	expect_order(&q, want, 2);
}

Test(queue, levels_out_of_range_are_clamped)
{
	struct bt_queue q;
	struct item it[5];
	items_init(it, 5);
	bt_queue_init(&q, 3, 0);
	bt_queue_push(&q, &it[0].link, 99); /* -> 2 */
	bt_queue_push(&q, &it[1].link, 1);
	bt_queue_push(&q, &it[2].link, -7); /* -> 0 */
	bt_queue_push_front(&q, &it[3].link, 3); /* -> 2, at its head */
	bt_queue_push_front(&q, &it[4].link, -1); /* -> 0, at its head */
	cr_assert_eq(it[0].link.level, 2);
	cr_assert_eq(it[2].link.level, 0);
	cr_assert_eq(it[3].link.level, 2);
	cr_assert_eq(it[4].link.level, 0);
	const int want[] = {4, 2, 1, 3, 0};
	expect_order(&q, want, 5);
}

Test(queue, a_single_level_queue_clamps_every_priority_to_it)
{
	struct bt_queue q;
	struct item it[3];
	items_init(it, 3);
	bt_queue_init(&q, 1, 0);
	bt_queue_push(&q, &it[0].link, 5);
	bt_queue_push(&q, &it[1].link, 0);
	bt_queue_push(&q, &it[2].link, BT_QUEUE_MAX_LEVELS + 10);
	const int want[] = {0, 1, 2};
	expect_order(&q, want, 3);
}

Test(queue, all_sixteen_levels_are_usable)
{
	struct bt_queue q;
	struct item it[BT_QUEUE_MAX_LEVELS];
	items_init(it, BT_QUEUE_MAX_LEVELS);
	bt_queue_init(&q, BT_QUEUE_MAX_LEVELS, 0);
	for (int i = 0; i < BT_QUEUE_MAX_LEVELS; i++)
		bt_queue_push(&q, &it[i].link, BT_QUEUE_MAX_LEVELS - 1 - i);
	int want[BT_QUEUE_MAX_LEVELS];
	for (int i = 0; i < BT_QUEUE_MAX_LEVELS; i++)
		want[i] = BT_QUEUE_MAX_LEVELS - 1 - i;
	expect_order(&q, want, BT_QUEUE_MAX_LEVELS);
}

Test(queue, remove_from_the_middle_keeps_the_others_in_order)
{
	struct bt_queue q;
	struct item it[5];
	items_init(it, 5);
	bt_queue_init(&q, 1, 0);
	for (int i = 0; i < 5; i++)
		bt_queue_push(&q, &it[i].link, 0);
	bt_queue_remove(&q, &it[2].link);
	cr_assert_eq(q.len, 4);
	cr_assert_not(bt_qlink_queued(&it[2].link));
	bt_queue_remove(&q, &it[0].link); /* the head */
	bt_queue_remove(&q, &it[4].link); /* the tail */
	cr_assert_eq(q.len, 2);
	const int want[] = {1, 3};
	expect_order(&q, want, 2);
}

Test(queue, remove_frees_a_slot_under_the_bound)
{
	struct bt_queue q;
	struct item it[3];
	items_init(it, 3);
	bt_queue_init(&q, 2, 2);
	bt_queue_push(&q, &it[0].link, 0);
	bt_queue_push(&q, &it[1].link, 1);
	cr_assert_eq(bt_queue_push(&q, &it[2].link, 1), BT_EFULL);
	bt_queue_remove(&q, &it[1].link);
	cr_assert_eq(bt_queue_push(&q, &it[2].link, 1), 0);
	const int want[] = {0, 2};
	expect_order(&q, want, 2);
}

Test(queue, removing_the_last_of_a_level_falls_through_to_the_next)
{
	struct bt_queue q;
	struct item it[2];
	items_init(it, 2);
	bt_queue_init(&q, 2, 0);
	bt_queue_push(&q, &it[0].link, 0);
	bt_queue_push(&q, &it[1].link, 1);
	bt_queue_remove(&q, &it[0].link);
	cr_assert_eq(peek_id(&q), 1);
	bt_queue_remove(&q, &it[1].link);
	cr_assert_null(bt_queue_peek(&q));
}

/* ---- heap ---- */

/* Deterministic pseudo-random numbers, so a failure reproduces. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The heap property and the back-pointers, checked over the whole array. */
static void check_heap(const struct bt_heap *h)
{
	for (size_t i = 0; i < h->len; i++) {
		cr_assert_eq(h->nodes[i]->index, i, "node at %zu thinks it is at %zu", i,
			     h->nodes[i]->index);
		if (i > 0)
			cr_assert_leq(h->nodes[(i - 1) / 2]->key, h->nodes[i]->key,
				      "heap order broken at %zu", i);
	}
}

/* Removes the minimum until empty; the keys must come out as sorted[]. */
static void drain_sorted(struct bt_heap *h, const uint64_t *sorted, size_t n)
{
	cr_assert_eq(h->len, n);
	for (size_t i = 0; i < n; i++) {
		struct bt_heap_node *m = bt_heap_min(h);
		cr_assert_not_null(m, "heap empty after %zu of %zu", i, n);
		cr_assert_eq(m->key, sorted[i], "pop %zu: key %llu, want %llu", i,
			     (unsigned long long)m->key, (unsigned long long)sorted[i]);
		bt_heap_remove(h, m);
		cr_assert_not(bt_heap_contains(m));
		if (i % 64 == 0)
			check_heap(h);
	}
	cr_assert_null(bt_heap_min(h));
}

Test(heap, min_of_an_empty_heap_is_null)
{
	struct bt_heap h;
	bt_heap_init(&h);
	cr_assert_null(bt_heap_min(&h));
	bt_heap_release(&h);
}

Test(heap, contains_follows_insert_and_remove)
{
	struct bt_heap h;
	struct item it[2];
	items_init(it, 2);
	bt_heap_init(&h);
	cr_assert_not(bt_heap_contains(&it[0].node));
	bt_heap_insert(&h, &it[0].node, 5);
	bt_heap_insert(&h, &it[1].node, 3);
	cr_assert(bt_heap_contains(&it[0].node));
	cr_assert(bt_heap_contains(&it[1].node));
	bt_heap_remove(&h, &it[0].node);
	cr_assert_not(bt_heap_contains(&it[0].node));
	cr_assert(bt_heap_contains(&it[1].node));
	cr_assert_eq(bt_heap_min(&h), &it[1].node);
	bt_heap_remove(&h, &it[1].node);
	cr_assert_not(bt_heap_contains(&it[1].node));
	cr_assert_eq(h.len, 0);
	bt_heap_release(&h);
}

Test(heap, random_keys_come_out_in_sorted_order)
{
	enum { N = 2000 }; /* well past the initial capacity of 64 */
	struct item *it = calloc(N, sizeof(*it));
	uint64_t *keys = calloc(N, sizeof(*keys));
	cr_assert(it && keys);
	items_init(it, N);
	struct bt_heap h;
	bt_heap_init(&h);
	for (size_t i = 0; i < N; i++) {
		/* Small range too, so that equal keys occur. */
		keys[i] = i % 3 ? rng() : rng() % 50;
		bt_heap_insert(&h, &it[i].node, keys[i]);
		cr_assert_eq(it[i].node.key, keys[i]);
	}
	check_heap(&h);
	qsort(keys, N, sizeof(*keys), cmp_u64);
	drain_sorted(&h, keys, N);
	bt_heap_release(&h);
	free(it);
	free(keys);
}

Test(heap, extreme_keys_are_ordered)
{
	struct item it[4];
	items_init(it, 4);
	struct bt_heap h;
	bt_heap_init(&h);
	bt_heap_insert(&h, &it[0].node, UINT64_MAX);
	bt_heap_insert(&h, &it[1].node, 0);
	bt_heap_insert(&h, &it[2].node, UINT64_MAX - 1);
	bt_heap_insert(&h, &it[3].node, 1);
	const uint64_t want[] = {0, 1, UINT64_MAX - 1, UINT64_MAX};
	drain_sorted(&h, want, 4);
	bt_heap_release(&h);
}

Test(heap, removing_arbitrary_nodes_keeps_the_rest_ordered)
{
	enum { N = 500 };
	struct item *it = calloc(N, sizeof(*it));
	uint64_t *keys = calloc(N, sizeof(*keys));
	cr_assert(it && keys);
	items_init(it, N);
	struct bt_heap h;
	bt_heap_init(&h);
	for (size_t i = 0; i < N; i++)
		bt_heap_insert(&h, &it[i].node, rng() % 10000);
	/* Remove every third node, wherever it sits (leaves, inner, root). */
	size_t left = 0;
	for (size_t i = 0; i < N; i++) {
		if (i % 3 == 0) {
			bt_heap_remove(&h, &it[i].node);
			cr_assert_not(bt_heap_contains(&it[i].node));
			check_heap(&h);
		} else {
			keys[left++] = it[i].node.key;
		}
	}
	/* And the current root, twice. */
	qsort(keys, left, sizeof(*keys), cmp_u64);
	bt_heap_remove(&h, bt_heap_min(&h));
	bt_heap_remove(&h, bt_heap_min(&h));
	check_heap(&h);
	drain_sorted(&h, keys + 2, left - 2);
	bt_heap_release(&h);
	free(it);
	free(keys);
}

Test(heap, removing_a_node_whose_replacement_must_sift_up)
{
	/*
	 * The last node moved into a removed slot can be smaller than the
	 * slot's new parent (another subtree): it must then go up, not down.
	 *          0
	 *      10      1
	 *    11  12   2  3
	 * Removing 11 moves 3 under 10, where it must rise above it.
	 */
	const uint64_t k[] = {0, 10, 1, 11, 12, 2, 3};
	struct item it[7];
	items_init(it, 7);
	struct bt_heap h;
	bt_heap_init(&h);
	for (int i = 0; i < 7; i++)
		bt_heap_insert(&h, &it[i].node, k[i]);
	cr_assert_eq(h.nodes[3], &it[3].node, "fixture is not the drawn tree");
	bt_heap_remove(&h, &it[3].node);
	check_heap(&h);
	const uint64_t want[] = {0, 1, 2, 3, 10, 12};
	drain_sorted(&h, want, 6);
	bt_heap_release(&h);
}

Test(heap, update_moves_a_node_up_and_down)
{
	enum { N = 300 };
	struct item *it = calloc(N, sizeof(*it));
	uint64_t *keys = calloc(N, sizeof(*keys));
	cr_assert(it && keys);
	items_init(it, N);
	struct bt_heap h;
	bt_heap_init(&h);
	for (size_t i = 0; i < N; i++)
		bt_heap_insert(&h, &it[i].node, 1000 + rng() % 1000);
	/* Decrease some keys below everything, increase others above. */
	bt_heap_update(&h, &it[N - 1].node, 1);
	cr_assert_eq(bt_heap_min(&h), &it[N - 1].node);
	struct bt_heap_node *root = bt_heap_min(&h);
	bt_heap_update(&h, root, 5000);
	cr_assert_neq(bt_heap_min(&h), root);
	for (size_t i = 0; i < N; i += 7)
		bt_heap_update(&h, &it[i].node, rng() % 3000);
	check_heap(&h);
	for (size_t i = 0; i < N; i++) {
		cr_assert(bt_heap_contains(&it[i].node));
		keys[i] = it[i].node.key;
	}
	cr_assert_eq(it[N - 1].node.key, 5000);
	qsort(keys, N, sizeof(*keys), cmp_u64);
	drain_sorted(&h, keys, N);
	bt_heap_release(&h);
	free(it);
	free(keys);
}

Test(heap, update_of_a_node_not_in_the_heap_inserts_it)
{
	struct item it[2];
	items_init(it, 2);
	struct bt_heap h;
	bt_heap_init(&h);
	bt_heap_insert(&h, &it[0].node, 50);
	bt_heap_update(&h, &it[1].node, 7);
	cr_assert(bt_heap_contains(&it[1].node));
	cr_assert_eq(h.len, 2);
	cr_assert_eq(bt_heap_min(&h), &it[1].node);
	bt_heap_release(&h);
}

Test(heap, a_removed_node_can_be_inserted_again)
{
	struct item it[3];
	items_init(it, 3);
	struct bt_heap h;
	bt_heap_init(&h);
	bt_heap_insert(&h, &it[0].node, 10);
	bt_heap_insert(&h, &it[1].node, 20);
	bt_heap_insert(&h, &it[2].node, 30);
	bt_heap_remove(&h, &it[0].node);
	bt_heap_insert(&h, &it[0].node, 25);
	const uint64_t want[] = {20, 25, 30};
	drain_sorted(&h, want, 3);
	bt_heap_release(&h);
}

Test(heap, release_leaves_an_empty_reusable_heap)
{
	struct item it[100];
	items_init(it, 100);
	struct bt_heap h;
	bt_heap_init(&h);
	for (int i = 0; i < 100; i++)
		bt_heap_insert(&h, &it[i].node, (uint64_t)(100 - i));
	bt_heap_release(&h);
	cr_assert_eq(h.len, 0);
	cr_assert_null(h.nodes);
	cr_assert_null(bt_heap_min(&h));
	bt_heap_node_init(&it[0].node);
	bt_heap_insert(&h, &it[0].node, 3);
	cr_assert_eq(bt_heap_min(&h), &it[0].node);
	bt_heap_release(&h);
}
