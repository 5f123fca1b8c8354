/*
 * What every process baton starts for a stage shares, persistent replica
 * or spawn-mode script alike: PR_SET_PDEATHSIG, its unit's cgroup, no
 * inherited descriptors but its stdio (and a worker's channel), its own
 * process group, the stage's workdir and user, the stage's environment
 * plus baton's variables (BATON_*, the GPU it was placed on, unbuffered
 * Python output).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "../sched/sched.h"
#include "proc.h"

extern char **environ;

/*
 * Adds var ("K=V") unless K is set.  Python buffers stdout in blocks when it
 * is a pipe, which would delay worker output lines in the log by minutes;
 * PYTHONUNBUFFERED is the default here unless the stage sets it.
 */
static char **with_default(char **env, const char *var)
{
	size_t klen = strcspn(var, "=") + 1, n = 0;
	for (; env[n]; n++)
		if (!strncmp(env[n], var, klen))
			return env;
	env = bt_realloc(env, (n + 2) * sizeof(*env));
	env[n] = bt_strdup(var);
	env[n + 1] = NULL;
	return env;
}

void bt_launch_init(struct bt_launch *l, const struct bt_replica *r, char *const *argv,
		    char *const *extra, const struct bt_unit *unit)
{
	const struct bt_stage_config *cfg = r->stage->cfg;
	struct bt_daemon *d = r->stage->d;
	char stage[160], replica[32], cuda[64], fraction[64];
	char *vars[16];
	int n = 0;
	snprintf(stage, sizeof(stage), "BATON_STAGE=%s", cfg->name);
	snprintf(replica, sizeof(replica), "BATON_REPLICA=%d", r->id);
	vars[n++] = stage;
	vars[n++] = replica;
	vars[n++] = (char *)bt_contain_instance(d->contain);
	if (r->gpu >= 0) {
		snprintf(cuda, sizeof(cuda), "CUDA_VISIBLE_DEVICES=%d", d->gpus[r->gpu].id);
		snprintf(fraction, sizeof(fraction), "BATON_GPU_FRACTION=%g", cfg->gpu_fraction);
		vars[n++] = cuda;
		vars[n++] = fraction;
		/* NVML numbers GPUs in PCI order; make CUDA's numbering the same. */
		vars[n++] = "CUDA_DEVICE_ORDER=PCI_BUS_ID";
	}
	for (int i = 0; extra && extra[i] && n < 15; i++)
		vars[n++] = extra[i];
	vars[n] = NULL;
	l->env = with_default(bt_config_stage_environ(cfg, environ, vars), "PYTHONUNBUFFERED=1");

	memset(&l->opts, 0, sizeof(l->opts));
	l->opts.file = argv[0];
	l->opts.args = (char **)argv;
	l->opts.env = l->env;
	l->opts.cwd = cfg->workdir;
	l->opts.setsid = 1;
	l->opts.cgroup = bt_unit_cgroup(unit);
	l->opts.uid = cfg->user ? (int)cfg->uid : -1;
	l->opts.gid = cfg->user ? (int)cfg->gid : -1;
	l->opts.parent_death = 1;
}

void bt_launch_release(struct bt_launch *l)
{
	bt_config_free_environ(l->env);
	l->env = NULL;
}
