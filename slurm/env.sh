# slurm/env.sh: the environment every megarl Slurm script shares. Source it (bash), don't run it.
#
# 1. Site setup hook: $MEGARL_SETUP (shell commands, e.g. "module load cuda/12.4") is evaluated,
#    then $MEGARL_SETUP_FILE is sourced when set. megarl submit fills MEGARL_SETUP from the
#    recipe's slurm.setup.
# 2. Python: $MEGARL_VENV/bin/activate is sourced when set; $MEGARL_PYTHON (default: python3 on
#    PATH after the hook) runs megarl. A $MEGARL_VENV that does not exist yet is created from the
#    tested GPU lock of the checkout $MEGARL_HOME (megarl_install_venv below), once.
# 3. Network: $MEGARL_NET_IFNAME (e.g. ib0, eth0) sets NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME
#    unless they are already set; without it NCCL and Gloo pick an interface themselves.
# 4. Node addresses: `megarl_node_addr NODE` prints a node's NodeAddr from `scontrol show node`
#    (not its hostname: NodeAddr is what the nodes reach each other at, and on test clusters
#    several emulated nodes share one host at 127.0.0.1). `megarl_job_nodes` lists the job's
#    nodes in order. `megarl_master_port` derives a port from the job id.

if [ -n "${MEGARL_SETUP:-}" ]; then
  eval "$MEGARL_SETUP"
fi
if [ -n "${MEGARL_SETUP_FILE:-}" ]; then
  # shellcheck disable=SC1090
  source "$MEGARL_SETUP_FILE"
fi
# Create a venv from megarl's tested GPU lock: megarl_install_venv VENV [CHECKOUT]. The lock is
# CHECKOUT/megarl/locks/gpu-py3<minor>.txt for the Python that $MEGARL_BASE_PYTHON (default python3) runs,
# or $MEGARL_LOCK_FILE. A lock lists every package, so both installs take --no-deps. Nodes that call it
# at once wait for the first under a file lock; a venv counts as installed only once its marker
# file is written, so an interrupted install is redone, not used.
megarl_install_venv() {
  local venv=$1 home=${2:-${MEGARL_HOME:-}} py=${MEGARL_BASE_PYTHON:-python3} minor lock
  minor=$("$py" -c 'import sys; print(sys.version_info.minor)') || return 2
  lock=${MEGARL_LOCK_FILE:-$home/megarl/locks/gpu-py3$minor.txt}
  if [ -z "$home" ] || [ ! -f "$home/setup.py" ] || [ ! -f "$lock" ]; then
    echo "megarl: cannot create $venv: no megarl checkout at MEGARL_HOME='$home' with the lock $lock; set MEGARL_HOME to the checkout (or MEGARL_LOCK_FILE)" >&2
    return 2
  fi
  mkdir -p "$(dirname "$venv")"
  (
    flock 9
    [ -f "$venv/.megarl-installed" ] && exit 0
    rm -rf "$venv"
    "$py" -m venv "$venv" && "$venv/bin/pip" install -q --no-deps -r "$lock" \
      && "$venv/bin/pip" install -q --no-deps -e "$home" && echo "$lock" > "$venv/.megarl-installed"
  ) 9> "$venv.install-lock"
}

if [ -n "${MEGARL_VENV:-}" ] && [ ! -f "$MEGARL_VENV/.megarl-installed" ] && [ ! -f "$MEGARL_VENV/bin/activate" ]; then
  megarl_install_venv "$MEGARL_VENV" || return 2 2>/dev/null || exit 2
fi
if [ -n "${MEGARL_VENV:-}" ] && [ -f "$MEGARL_VENV/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$MEGARL_VENV/bin/activate"
fi
export MEGARL_PYTHON="${MEGARL_PYTHON:-$(command -v python3)}"

if [ -n "${MEGARL_NET_IFNAME:-}" ]; then
  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$MEGARL_NET_IFNAME}"
  export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$MEGARL_NET_IFNAME}"
fi
export PYTHONUNBUFFERED=1

megarl_job_nodes() {
  scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a Slurm job}"
}

megarl_node_addr() {
  local addr
  addr=$(scontrol show node -o "$1" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
  echo "${addr:-$1}"
}

megarl_master_port() {  # 20000-29999 (megarl.launch.layout.MASTER_PORT_BASE/SPAN), below the server ports
  echo $(( 20000 + ${SLURM_JOB_ID:-0} % 10000 ))
}

megarl_log() {
  echo "[megarl $(date '+%F %T') ${SLURMD_NODENAME:-$(hostname -s)}] $*"
}
