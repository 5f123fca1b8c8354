/*
 * What every process baton starts for a stage shares, persistent replica
 * or spawn-mode script alike: it runs through the exec shim (for
 * PR_SET_PDEATHSIG, its cgroup, its user, no inherited descriptors), in
 * its own process group, in the stage's workdir,
 * as the stage's user, with the stage's environment plus baton's
 * variables (BATON_*, the GPU it was placed on, unbuffered Python output).
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

	int argc = 0;
	while (argv[argc])
		argc++;
	snprintf(l->ppid, sizeof(l->ppid), "%d", (int)getpid());
	/* A worker keeps its channel (fd 3); a spawn-mode script, stdio only. */
	snprintf(l->nfds, sizeof(l->nfds), "%d", cfg->mode == BT_MODE_SPAWN ? 3 : 4);
	/* The shim switches user after joining the cgroup, which needs root. */
	if (cfg->user)
		snprintf(l->user, sizeof(l->user), "%u:%u", (unsigned)cfg->uid, (unsigned)cfg->gid);
	else
		snprintf(l->user, sizeof(l->user), "-");
	l->args = bt_calloc((size_t)argc + 7, sizeof(char *));
	l->args[0] = d->self_exe;
	l->args[1] = "__shim";
	l->args[2] = l->ppid;
	l->args[3] = l->nfds;
	l->args[4] = bt_unit_cgroup(unit) ? (char *)bt_unit_cgroup(unit) : "-";
	l->args[5] = l->user;
	memcpy(l->args + 6, argv, (size_t)argc * sizeof(char *));

	memset(&l->opts, 0, sizeof(l->opts));
	l->opts.file = d->self_exe;
	l->opts.args = l->args;
	l->opts.env = l->env;
	l->opts.cwd = cfg->workdir;
	l->opts.flags = UV_PROCESS_DETACHED; /* setsid: its own process group */
}

void bt_launch_release(struct bt_launch *l)
{
	free(l->args);
	bt_config_free_environ(l->env);
	l->args = NULL;
	l->env = NULL;
}
