/* Scenario files of `baton bench --scenarios` and the chart's axis choice. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "jobs/jobs.h"

static int parse(const char *text, struct bt_scenario_set *set, char *err, size_t errlen)
{
	return bt_scenarios_parse("sc.yaml", text, strlen(text), set, err, errlen);
}

Test(scenario, top_level_keys_are_defaults_a_scenario_overrides)
{
	struct bt_scenario_set set;
	char err[512];
	int r = parse("pipeline: p\npayload: hi\nduration_s: 3\nreplicas: 2\n"
		      "scenarios:\n"
		      "  - {name: a}\n"
		      "  - {name: b, duration_s: 5, replicas: {ocr: 4}, load: open, rate: 50,"
		      " arrival: poisson}\n",
		      &set, err, sizeof(err));
	cr_assert_eq(r, 0, "%s", err);
	cr_assert_eq(set.n, 2);
	cr_assert_eq(set.npayloads, 1);
	cr_assert_eq(set.lens[0], 2);
	cr_assert_str_eq(set.s[0].pipeline, "p");
	cr_assert_eq(set.s[0].duration_s, 3);
	cr_assert_eq(set.s[0].replicas_all, 2);
	cr_assert_eq(set.s[0].load, BT_LOAD_CLOSED);
	cr_assert_eq(set.s[0].concurrency, 8);
	cr_assert_eq(set.s[1].duration_s, 5);
	cr_assert_eq(set.s[1].replicas_all, 2);
	cr_assert_eq(set.s[1].nscale, 1);
	cr_assert_str_eq(set.s[1].scale[0].stage, "ocr");
	cr_assert_eq(set.s[1].scale[0].replicas, 4);
	cr_assert_eq(set.s[1].load, BT_LOAD_OPEN);
	cr_assert(set.s[1].poisson);
	cr_assert_eq(set.s[1].rate, 50);
	bt_scenarios_release(&set);
}

Test(scenario, errors_carry_file_line_and_column)
{
	struct bt_scenario_set set;
	char err[512];
	cr_assert_neq(parse("pipeline: p\npayload: hi\nscenarios:\n  - {name: a, warmup_s: -1}\n",
			    &set, err, sizeof(err)), 0);
	cr_assert(strstr(err, "sc.yaml:4:25: 'warmup_s' must be between"), "%s", err);
	cr_assert_eq(set.n, 0);
	cr_assert_neq(parse("pipeline: p\npayload: hi\nscenarios:\n  - {name: a, load: closed, "
			    "rate: 5}\n", &set, err, sizeof(err)), 0);
	cr_assert(strstr(err, "sc.yaml:4:5: scenario 'a': 'rate' is for load: open"), "%s", err);
	cr_assert_neq(parse("pipeline: p\npayload: hi\nbogus: 1\nscenarios: [{}]\n", &set, err,
			    sizeof(err)), 0);
	cr_assert(strstr(err, "sc.yaml:3:1: unknown key 'bogus'"), "%s", err);
	cr_assert_neq(parse("payload: hi\nscenarios: [{name: a}]\n", &set, err, sizeof(err)), 0);
	cr_assert(strstr(err, "names no 'pipeline'"), "%s", err);
}

Test(scenario, standard_suite_sweeps_one_to_eight_replicas)
{
	struct bt_scenario_set set;
	memset(&set, 0, sizeof(set));
	bt_scenarios_standard(&set, "documents", 10, 2);
	int want[] = {1, 2, 4, 6, 8};
	cr_assert_eq(set.n, 5);
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(set.s[i].replicas_all, want[i]);
		cr_assert_str_eq(set.s[i].pipeline, "documents");
		cr_assert_eq(set.s[i].load, BT_LOAD_CLOSED);
	}
	bt_scenarios_release(&set);
}

Test(scenario, the_chart_plots_against_what_varies)
{
	struct bt_scenario a = {.load = BT_LOAD_CLOSED, .concurrency = 4};
	struct bt_scenario b = {.load = BT_LOAD_CLOSED, .concurrency = 8};
	struct bt_scenario_result res[2] = {{.sc = &a, .replicas = 2}, {.sc = &b, .replicas = 2}};
	cr_assert_str_eq(bt_report_varied(res, 2), "concurrency");
	res[1].replicas = 4;
	cr_assert_str_eq(bt_report_varied(res, 2), "replicas");
	res[1].replicas = 2;
	b.concurrency = 4;
	cr_assert_str_eq(bt_report_varied(res, 2), "scenario");
}
