#!/usr/bin/env bash
# slurm/node_role.sh ROLE [-- ENTRY ARGS...]: what one node of a megarl training job runs.
# Started by the rendered sbatch script (megarl submit) as one srun task per node.
#
#   trainer    torchrun over this node's trainer ranks; rendezvous at $MASTER_ADDR:$MASTER_PORT
#              (the first trainer node); node rank = this task's rank in the step. Each rank runs
#              `python -m megarl.launch.rank ENTRY ARGS...`, which records its exit code.
#   rollout    this node's rollout servers (python -m megarl.launch.node_servers); a server that
#              dies is logged and the others keep serving.
#   both       both on the same node (colocated or partitioned GPUs): this node's servers in the
#              background, waited for, then the trainer.
#
# Signals: SIGUSR1 (time limit near, forwarded by the batch script through srun) and SIGTERM
# are passed on to the trainer ranks themselves (torchrun and the servers ignore SIGUSR1), and
# re-sent every 30 s until they exit, so a rank still starting up hears it too. The trainer then
# checkpoints after its current step and exits with code 75; this script exits 75 when any rank
# of this node did, so the batch script knows to requeue.
#
# Environment (exported by the batch script): MEGARL_SLURM_DIR, MEGARL_RUN_DIR, MEGARL_NODE_LOG_DIR,
# MEGARL_TRAINER_NODES, MEGARL_NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, MEGARL_SERVE_TOKEN, and for
# `both` nodes MEGARL_SERVERS_PER_NODE, MEGARL_SERVER_BASE_PORT, MEGARL_HEALTH_TIMEOUT.
set -uo pipefail

role=${1:?usage: node_role.sh trainer|rollout|both [-- ENTRY ARGS...]}
shift
if [ "${1:-}" = "--" ]; then shift; fi

# shellcheck source=slurm/env.sh
source "${MEGARL_SLURM_DIR:?set by the sbatch script}/env.sh"
node=${SLURMD_NODENAME:-$(hostname -s)}
index=${SLURM_PROCID:-0}  # this node's rank within the step (one task per node)
logdir=${MEGARL_NODE_LOG_DIR:?set by the sbatch script}
mkdir -p "$logdir"
exec >>"$logdir/${role}_${node}.log" 2>&1
megarl_log "node_role $role: node index $index, job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}"

PREEMPTED_EXIT_CODE=75
torchrun_pid=""
servers_pid=""
stop_signal=""

forward_to_ranks() {  # $1: signal name; send it to every trainer rank (torchrun's children)
  local pid
  [ -n "$torchrun_pid" ] || return 0
  for pid in $(ps -o pid= --ppid "$torchrun_pid" 2>/dev/null); do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}

on_stop_signal() {  # $1: USR1 or TERM
  megarl_log "received SIG$1: asking the trainer ranks to checkpoint and exit"
  stop_signal=$1
  forward_to_ranks "$1"
}

run_servers() {  # run as `run_servers &`: exec makes $! the server manager itself, so signals reach it
  # The time-limit SIGUSR1 is for the trainer: servers (and their children) ignore it and keep
  # serving the trainer's last step; they stop on SIGTERM.
  trap '' USR1
  exec "$MEGARL_PYTHON" -m megarl.launch.node_servers --plan "$MEGARL_RUN_DIR/launch.json" \
    --node-index "$index" --node-name "$node" --log-dir "$logdir"
}

run_trainer() {  # "$@": ENTRY ARGS...; returns the node's trainer exit code
  local exit_dir="$logdir/exit_codes" rc waited=0
  mkdir -p "$exit_dir"
  export MEGARL_EXIT_CODE_DIR=$exit_dir
  if [ -n "$stop_signal" ]; then  # told to stop while this node's servers were starting
    megarl_log "SIG$stop_signal before the trainer started: not starting it; exiting $PREEMPTED_EXIT_CODE to requeue"
    return "$PREEMPTED_EXIT_CODE"
  fi
  megarl_log "torchrun: ${MEGARL_TRAINER_NODES} node(s) x ${MEGARL_NPROC_PER_NODE} ranks, node rank $index," \
    "rendezvous $MASTER_ADDR:$MASTER_PORT; entry: $*"
  # SIGUSR1 is ignored by torchrun itself (Slurm's proctrack signals every process of the step, and
  # torchrun has no handler for it: it would die and orphan ranks that are still checkpointing);
  # megarl.launch.rank installs the ranks' own handler.
  ( trap '' USR1; exec "$MEGARL_PYTHON" -m torch.distributed.run \
    --nnodes "$MEGARL_TRAINER_NODES" --node-rank "$index" --nproc-per-node "$MEGARL_NPROC_PER_NODE" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    --log-dir "$logdir/torchrun_$node" --tee 3 \
    -m megarl.launch.rank "$@" ) &
  torchrun_pid=$!
  while kill -0 "$torchrun_pid" 2>/dev/null; do
    if [ -n "$stop_signal" ]; then  # poll, re-sending the stop signal every 30 s
      sleep 1
      waited=$((waited + 1))
      if [ $((waited % 30)) = 0 ]; then forward_to_ranks "$stop_signal"; fi
    else
      wait "$torchrun_pid"
    fi
  done
  wait "$torchrun_pid"
  rc=$?
  if grep -qx "$PREEMPTED_EXIT_CODE" "$exit_dir"/rank_*.code 2>/dev/null; then
    megarl_log "trainer ranks checkpointed and exited $PREEMPTED_EXIT_CODE (preempted; torchrun rc $rc)"
    return "$PREEMPTED_EXIT_CODE"
  fi
  megarl_log "torchrun exited with code $rc"
  return "$rc"
}

stop_servers() {
  [ -n "$servers_pid" ] || return 0
  kill -TERM "$servers_pid" 2>/dev/null || true
  wait "$servers_pid" 2>/dev/null || true
}

case "$role" in
  trainer | both)
    trap 'on_stop_signal USR1' USR1
    trap 'on_stop_signal TERM' TERM
    ;;
esac

case "$role" in
  trainer)
    run_trainer "$@"
    exit $?
    ;;
  rollout)
    trap 'megarl_log "received SIGTERM: stopping servers"; kill -TERM $servers_pid 2>/dev/null' TERM
    run_servers &
    servers_pid=$!
    while kill -0 "$servers_pid" 2>/dev/null; do wait "$servers_pid"; done
    wait "$servers_pid"
    rc=$?
    megarl_log "rollout servers ended (rc $rc)"
    exit "$rc"
    ;;
  both)
    run_servers &
    servers_pid=$!
    # This node's servers first (SGLang loads a large model for minutes), then the trainer ranks.
    local_urls=()
    for ((i = 0; i < MEGARL_SERVERS_PER_NODE; i++)); do
      local_urls+=("http://127.0.0.1:$((MEGARL_SERVER_BASE_PORT + index * MEGARL_SERVERS_PER_NODE + i))")
    done
    if ! ( trap '' USR1; exec "$MEGARL_PYTHON" -m megarl.launch.health --timeout "$MEGARL_HEALTH_TIMEOUT" \
        --watch-pid "$servers_pid" "${local_urls[@]}" ); then
      megarl_log "this node's rollout servers did not come up; the trainer continues with the other nodes' servers"
    fi
    run_trainer "$@"
    rc=$?
    stop_servers
    exit "$rc"
    ;;
  *)
    echo "node_role.sh: unknown role '$role'; use trainer, rollout or both" >&2
    exit 2
    ;;
esac
