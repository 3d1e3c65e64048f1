#!/usr/bin/env bash
# cluster.sh: a Kubernetes cluster on this machine whose container runtime
# is berthd, built from upstream sources (hack/kubernetes/build.sh).
#
#   cluster.sh up [NODES]   bring up NODES nodes (default 1) and leave them
#                           running; prints the lines to eval
#   cluster.sh down         remove all of it; the host is as before
#   cluster.sh env          print the eval lines again
#   cluster.sh start N      start node N's berthd and kubelet where they are
#                           not running (after a crash, or a test's kill -9)
#
# Each node is a network namespace and a mount namespace of its own, with
# its own berthd (root, state, socket, cgroup parent) and kubelet (root,
# ports, cgroup root, node name); /etc/kubernetes, /var/lib/kubelet and
# /var/log/{pods,containers} are the node's own directories bound there,
# so kubeadm writes to its usual paths and the host's stay untouched.
# Every address is on a bridge in a network namespace the script makes
# (the nodes') or on the veth from the host into it; the registry that
# serves the control plane's images listens there too. Nothing leaves
# the machine: the nodes have no default route.
#
# CLUSTER_RUNTIME=containerd runs containerd (CONTAINERD_BIN_DIR: containerd,
# its runc shim and runc, hack/containerd/build.sh) on the nodes instead of
# berthd, configured as kubeadm users do, for side-by-side runs.
#
# Environment: BERTH_BIN_DIR (berthd, berth, berth-shim, pause),
# CNI_BIN_DIR (the CNI plugins), K8S_BIN_DIR (the Kubernetes binaries),
# CLUSTER_DIR (default /var/lib/berth-cluster), CLUSTER_CGROUP (the cgroup
# everything runs below, default berth-cluster), MKIMAGE (hack/cluster/mkimage).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BERTH_BIN_DIR=${BERTH_BIN_DIR:-$root/bin}
CNI_BIN_DIR=${CNI_BIN_DIR:-$root/.cache/cni-bin}
K8S_BIN_DIR=${K8S_BIN_DIR:-$root/.cache/kubernetes}
CLUSTER_DIR=${CLUSTER_DIR:-/var/lib/berth-cluster}
MKIMAGE=${MKIMAGE:-$root/.cache/mkimage}
CONTAINERD_BIN_DIR=${CONTAINERD_BIN_DIR:-$root/.cache/containerd}
# Namespace files and the daemons' state: a private bind mount of its own,
# as ip-netns keeps /run/netns, so that mount namespaces can be pinned.
RUN_DIR=/run/berth-cluster
# Every process of the cluster runs in a cgroup below this one.
CGROUP_PARENT=${CLUSTER_CGROUP:-berth-cluster}

NET_PREFIX=10.210.0 # the nodes' bridge: host .1, node N .1N
HOST_IP=$NET_PREFIX.1
REGISTRY=$HOST_IP:5000
POD_SUBNET=10.244.0.0/16
SERVICE_SUBNET=10.96.0.0/12
NETNS_BRIDGE=berthc-net # holds the bridge br0
HOST_VETH=berthc0
# The host-global sysctls the kubelet sets (protectKernelDefaults off);
# saved at up, put back at down.
KUBELET_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
	kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# The paths kubeadm and the kubelet use whatever their configuration says;
# each node binds its own directories there. (Not /tmp: the suite's
# cluster directory lives there, and the node must still see it.)
# /var/run/cdi: where DRA drivers write the CDI specs of the devices they
# prepare on their node.
NODE_BINDS=(/etc/kubernetes /var/lib/kubelet /var/log/pods /var/log/containers /var/run/cdi)
# Host paths the control plane's and kube-proxy's hostPath volumes name;
# the kubelet (DirectoryOrCreate, FileOrCreate) or berthd (no type) makes
# those that are missing, and down removes what up found missing.
HOST_PATHS=(/etc/ssl/certs /etc/ca-certificates /usr/local/share/ca-certificates
	/usr/share/ca-certificates /usr/libexec/kubernetes/kubelet-plugins/volume/exec
	/lib/modules /run/xtables.lock)

k8s_version() { cat "$K8S_BIN_DIR/.version-kubeadm"; }
log() { echo "cluster: $*" >&2; }
die() {
	echo "cluster: $*" >&2
	exit 1
}

node_name() { echo "berth-node$1"; }
node_ip() { echo "$NET_PREFIX.1$1"; }
node_dir() { echo "$CLUSTER_DIR/node$1"; }
node_run() { echo "$RUN_DIR/node$1"; }
node_netns() { echo "berthc-node$1"; }
node_cgroup() { echo "$CGROUP_PARENT/node$1"; }
# The runtime the cluster was brought up with (berth or containerd).
runtime() { cat "$CLUSTER_DIR/runtime" 2>/dev/null || echo "${CLUSTER_RUNTIME:-berth}"; }
node_socket() { echo "$(node_run "$1")/$(runtime).sock"; }

# The names up takes are the machine's, not the cluster directory's:
# $RUN_DIR, the bridge's addresses, the API server's and etcd's ports.
# $RUN_DIR/owner names the cluster directory that holds them, so that a
# second cluster (another checkout's make test) stops at once with its
# name instead of failing half way in kubeadm's preflight, and its down
# leaves the first cluster alone.
owner() { cat "$RUN_DIR/owner" 2>/dev/null || true; }
other_owner() {
	local o
	o=$(owner)
	[ -n "$o" ] && [ "$o" != "$(realpath -m "$CLUSTER_DIR")" ]
}

# in_node N CMD...: run CMD in node N's network and mount namespaces.
in_node() {
	local n=$1
	shift
	nsenter --net="/run/netns/$(node_netns "$n")" --mount="$RUN_DIR/node$n.mnt" -- \
		env PATH="$K8S_BIN_DIR:$PATH" "$@"
}

# cgroup_dirs: the v1 hierarchies (or the v2 root) cgroups go in.
cgroup_dirs() {
	if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
		echo /sys/fs/cgroup
		return
	fi
	local d
	for d in /sys/fs/cgroup/*/; do
		d=${d%/}
		[ -L "$d" ] && continue
		[ -f "$d/cgroup.procs" ] && echo "$d"
	done
}

# make_cgroup PATH: PATH in every hierarchy; v1's cpuset takes no task
# before its cpus and mems are set, so each level copies its parent's.
make_cgroup() {
	local cg=$1 d sub part
	for d in $(cgroup_dirs); do
		mkdir -p "$d/$cg"
		[ -f "$d/cpuset.cpus" ] && [ ! -f "$d/cgroup.controllers" ] || continue
		sub=$d
		IFS=/ read -r -a parts <<<"$cg"
		for part in "${parts[@]}"; do
			[ -s "$sub/$part/cpuset.cpus" ] || cat "$sub/cpuset.cpus" >"$sub/$part/cpuset.cpus"
			[ -s "$sub/$part/cpuset.mems" ] || cat "$sub/cpuset.mems" >"$sub/$part/cpuset.mems"
			sub=$sub/$part
		done
	done
}

# kill_cgroup PATH: SIGKILL every process in PATH and below (all of them
# started by this cluster's daemons), then remove the cgroups.
kill_cgroup() {
	local cg=$1 d i pids
	for i in $(seq 50); do
		pids=
		for d in $(cgroup_dirs); do
			[ -d "$d/$cg" ] && pids+=" $(find "$d/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)"
		done
		[ -z "${pids// /}" ] && break
		# shellcheck disable=SC2086
		kill -9 $pids 2>/dev/null || true
		sleep 0.1
	done
	for d in $(cgroup_dirs); do
		[ -d "$d/$cg" ] && find "$d/$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
		[ ! -d "$d/$cg" ] || log "cgroup $d/$cg not removed"
	done
}

# start_daemon PIDFILE LOG CGROUP CMD...: start CMD in its own session
# and in CGROUP under $CGROUP_PARENT (made in every hierarchy), so that
# it and whatever it starts are found, and only those, at down. PIDFILE
# holds its pid and start time.
start_daemon() {
	local pidfile=$1 logfile=$2 cg=$CGROUP_PARENT/$3
	shift 3
	make_cgroup "$cg"
	DIRS=$(cgroup_dirs) setsid sh -c 'cg=$1; shift; for d in $DIRS; do echo $$ >"$d/$cg/cgroup.procs"; done; exec "$@"' \
		sh "$cg" "$@" </dev/null >>"$logfile" 2>&1 &
	echo "$! $(start_time $!)" >"$pidfile"
}

# start_time PID: the process's start time (in clock ticks after boot),
# which tells it from a later process given the same pid.
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# running PIDFILE: the process PIDFILE names is alive and is the one
# started (its start time matches).
running() {
	local pid start
	[ -f "$1" ] || return 1
	read -r pid start <"$1"
	[ -n "$pid" ] && [ -n "$start" ] && [ "$(start_time "$pid")" = "$start" ]
}

# stop_pid PIDFILE: SIGTERM, then SIGKILL, the process the file names,
# only if it is still the one started.
stop_pid() {
	local pidfile=$1 pid i
	if running "$pidfile"; then
		read -r pid _ <"$pidfile"
		kill "$pid" 2>/dev/null || true
		for i in $(seq 50); do
			running "$pidfile" || break
			sleep 0.1
		done
		if running "$pidfile"; then kill -9 "$pid" 2>/dev/null || true; fi
	fi
	rm -f "$pidfile"
}

setup_network() {
	local nodes=$1 n
	if [ ! -e "/run/netns/$NETNS_BRIDGE" ]; then
		ip netns add "$NETNS_BRIDGE"
		ip -n "$NETNS_BRIDGE" link set lo up
		ip -n "$NETNS_BRIDGE" link add br0 type bridge
		ip -n "$NETNS_BRIDGE" link set br0 up
		ip link add "$HOST_VETH" type veth peer name host netns "$NETNS_BRIDGE"
		ip -n "$NETNS_BRIDGE" link set host master br0 up
		ip addr add "$HOST_IP/24" dev "$HOST_VETH"
		ip link set "$HOST_VETH" up
	fi
	for n in $(seq "$nodes"); do
		local ns
		ns=$(node_netns "$n")
		[ -e "/run/netns/$ns" ] && continue
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		ip -n "$NETNS_BRIDGE" link add "node$n" type veth peer name eth0 netns "$ns"
		ip -n "$NETNS_BRIDGE" link set "node$n" master br0 up
		ip -n "$ns" addr add "$(node_ip "$n")/24" dev eth0
		ip -n "$ns" link set eth0 up
		# No default route: nothing a pod sends can leave the machine.
		# The service range is on-link so that host-network clients get
		# as far as kube-proxy's DNAT; unanswered, it stays on the bridge.
		ip -n "$ns" route add "$SERVICE_SUBNET" dev eth0
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
			net.bridge.bridge-nf-call-ip6tables=1
	done
}

# note_missing_paths PATH...: remember, for down, the top-most missing
# directory of each PATH.
note_missing_paths() {
	local p top
	for p in "$@"; do
		top=
		while [ "$p" != / ] && [ ! -e "$p" ]; do
			top=$p
			p=$(dirname "$p")
		done
		[ -n "$top" ] && echo "$top" >>"$CLUSTER_DIR/created-paths"
	done
	return 0
}

# claim_run_dir: $RUN_DIR, a private mount, owned by this cluster.
claim_run_dir() {
	if ! mountpoint -q "$RUN_DIR"; then
		mkdir -p "$RUN_DIR"
		mount --bind "$RUN_DIR" "$RUN_DIR"
		mount --make-private "$RUN_DIR"
	fi
	realpath -m "$CLUSTER_DIR" >"$RUN_DIR/owner"
}

# setup_mounts N: node N's mount namespace, pinned at $RUN_DIR/nodeN.mnt,
# with the node's directories bound over the usual paths.
setup_mounts() {
	local n=$1 dir p
	dir=$(node_dir "$n")
	[ -e "$RUN_DIR/node$n.mnt" ] && mountpoint -q "$RUN_DIR/node$n.mnt" && return 0
	touch "$RUN_DIR/node$n.mnt"
	mkdir -p "$(node_run "$n")"
	for p in "${NODE_BINDS[@]}"; do
		mkdir -p "$dir/binds$p"
		if [ ! -e "$p" ]; then
			note_missing_paths "$p"
			mkdir -p "$p"
		fi
	done
	# Host mounts keep reaching the node (slave); the node's mounts (pods'
	# root filesystems, volumes) stay in it and go with it.
	# The node's own names and resolver: nothing on a node asks the host's
	# DNS server (which is off the machine).
	{
		echo "127.0.0.1 localhost"
		local m
		for m in $(seq "$(cat "$CLUSTER_DIR/nodes")"); do echo "$(node_ip "$m") $(node_name "$m")"; done
	} >"$dir/hosts"
	unshare --mount="$RUN_DIR/node$n.mnt" --propagation slave sh -euc '
		dir=$1 resolv=$2; shift 2
		for p in "$@"; do mount --bind "$dir/binds$p" "$p"; done
		mount --bind "$dir/hosts" /etc/hosts
		mount --bind "$resolv" /etc/resolv.conf
	' sh "$dir" "$CLUSTER_DIR/resolv.conf" "${NODE_BINDS[@]}"
}

setup_cgroups() { make_cgroup "$(node_cgroup "$1")"; }

start_registry() {
	local dir=$CLUSTER_DIR/registry
	mkdir -p "$dir"
	running "$dir/pid" && return
	cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $REGISTRY
EOF
	start_daemon "$dir/pid" "$dir/registry.log" registry docker-registry serve "$dir/config.yml"
	local i
	for i in $(seq 100); do
		curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return
		sleep 0.1
	done
	die "registry did not come up on $REGISTRY: $(cat "$dir/registry.log")"
}

# push_images: the control plane's images, each a static binary (and
# what it needs) in one layer, named as kubeadm asks for them.
push_images() {
	local v stage
	v=$(k8s_version)
	stage=$(mktemp -d)
	# shellcheck disable=SC2064
	trap "rm -rf '$stage'" RETURN
	base() {
		mkdir -p "$1/etc" "$1/tmp" "$1/usr/local/bin" "$1/var/run"
		chmod 1777 "$1/tmp"
		printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
		printf 'root:x:0:\nnogroup:x:65534:\nnonroot:x:65532:\n' >"$1/etc/group"
		echo 'hosts: files dns' >"$1/etc/nsswitch.conf"
	}
	local c
	for c in kube-apiserver kube-controller-manager kube-scheduler; do
		base "$stage/$c"
		cp "$K8S_BIN_DIR/$c" "$stage/$c/usr/local/bin/"
		"$MKIMAGE" -registry "$REGISTRY" -rootfs "$stage/$c" \
			-config "{\"Entrypoint\":[\"/usr/local/bin/$c\"]}" "k8s/$c:$v"
	done
	# kube-proxy programs iptables: the nft backend with its libraries
	# and extensions, as the upstream image's distroless-iptables.
	base "$stage/kube-proxy"
	cp "$K8S_BIN_DIR/kube-proxy" "$stage/kube-proxy/usr/local/bin/"
	copy_with_libs "$stage/kube-proxy" /usr/sbin/xtables-nft-multi /usr/lib/x86_64-linux-gnu/xtables/*.so
	for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sf xtables-nft-multi "$stage/kube-proxy/usr/sbin/$c"
	done
	"$MKIMAGE" -registry "$REGISTRY" -rootfs "$stage/kube-proxy" \
		-config '{"Entrypoint":["/usr/local/bin/kube-proxy"]}' "k8s/kube-proxy:$v"
	local etcd_tag dns_tag
	etcd_tag=$(cat "$K8S_BIN_DIR/.version-etcd")
	base "$stage/etcd"
	cp "$K8S_BIN_DIR/etcd" "$stage/etcd/usr/local/bin/"
	mkdir -p "$stage/etcd/var/lib/etcd"
	"$MKIMAGE" -registry "$REGISTRY" -rootfs "$stage/etcd" \
		-config '{"Entrypoint":["/usr/local/bin/etcd"]}' "k8s/etcd:$etcd_tag"
	dns_tag=$(cat "$K8S_BIN_DIR/.version-coredns")
	base "$stage/coredns"
	cp "$K8S_BIN_DIR/coredns" "$stage/coredns/coredns"
	"$MKIMAGE" -registry "$REGISTRY" -rootfs "$stage/coredns" \
		-config '{"Entrypoint":["/coredns"],"ExposedPorts":{"53/tcp":{},"53/udp":{},"9153/tcp":{}}}' "k8s/coredns:$dns_tag"
	# The pause image kubeadm pins: berth's own pause binary.
	base "$stage/pause"
	cp "$BERTH_BIN_DIR/pause" "$stage/pause/pause"
	"$MKIMAGE" -registry "$REGISTRY" -rootfs "$stage/pause" \
		-config '{"Entrypoint":["/pause"],"User":"65535:65535"}' "k8s/pause:$(pause_tag)"
}

pause_tag() {
	"$K8S_BIN_DIR/kubeadm" config images list --kubernetes-version "$(k8s_version)" 2>/dev/null |
		sed -n 's#.*/pause:##p'
}

# copy_with_libs ROOT FILE...: FILE and the shared libraries it loads,
# at the same paths under ROOT.
copy_with_libs() {
	local dst=$1 f lib
	shift
	for f in "$@"; do
		mkdir -p "$dst$(dirname "$f")"
		cp -L "$f" "$dst$f"
		for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			[ -e "$dst$lib" ] && continue
			mkdir -p "$dst$(dirname "$lib")"
			cp -L "$lib" "$dst$lib"
		done
	done
}

# write_node_config N: the runtime's configuration and CNI template for
# node N.
write_node_config() {
	local n=$1 dir run
	dir=$(node_dir "$n")
	run=$(node_run "$n")
	mkdir -p "$dir/berth" "$dir/cni/net.d" "$dir/cni/ipam" "$run"
	cat >"$dir/registries.conf" <<EOF
[[registry]]
location = "$REGISTRY"
insecure = true
EOF
	# Pods reach pods of other nodes through the routes between the
	# nodes' pod CIDRs, without NAT (the Kubernetes network model).
	cat >"$dir/cni/bridge.conflist.template" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "berth-cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [{{range \$i, \$r := .PodCIDRRanges}}{{if \$i}}, {{end}}[{"subnet": "{{\$r}}"}]{{end}}],
        "routes": [{{range \$i, \$r := .Routes}}{{if \$i}}, {{end}}{"dst": "{{\$r}}"}{{end}}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
EOF
	if [ "$(runtime)" = containerd ]; then
		write_containerd_config "$n"
		return
	fi
	cat >"$dir/berth.toml" <<EOF
root = "$dir/berth"
state = "$run/berth"
socket = "$(node_socket "$n")"
cgroup_driver = "cgroupfs"
cgroup_parent = "/$(node_cgroup "$n")/berth"
cni_conf_dir = "$dir/cni/net.d"
cni_bin_dirs = ["$CNI_BIN_DIR"]
cni_conf_template = "$dir/cni/bridge.conflist.template"
registries_conf = "$dir/registries.conf"
registries_conf_dir = "$dir/registries.conf.d"
signature_policy = "$dir/policy.json"
auth_file = "$dir/auth.json"
EOF
	# The runtime handler Kubernetes' RuntimeClass specs ask for
	# ([NodeFeature:RuntimeHandler]), as the kubelet's e2e nodes have it.
	if command -v runc >/dev/null; then
		printf '\n[runtimes.test-handler]\nruntime_path = "%s"\n' "$(command -v runc)" >>"$dir/berth.toml"
	fi
	echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$dir/policy.json"
}

# write_containerd_config N: containerd 2.x as kubeadm users configure it
# (config version 3, runc with cgroupfs here, restrict_oom_score_adj for a
# node without CAP_SYS_RESOURCE), on the same CNI template and registry.
write_containerd_config() {
	local n=$1 dir run
	dir=$(node_dir "$n")
	run=$(node_run "$n")
	mkdir -p "$dir/containerd" "$dir/certs.d/$REGISTRY"
	cat >"$dir/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
	cat >"$dir/containerd.toml" <<EOF
version = 3
root = "$dir/containerd"
state = "$run/containerd"
[grpc]
  address = "$(node_socket "$n")"
[plugins.'io.containerd.internal.v1.opt']
  path = "$dir/containerd-opt"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$REGISTRY/k8s/pause:$(pause_tag)"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$dir/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$CONTAINERD_BIN_DIR/runc"
        SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.test-handler]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.test-handler.options]
        BinaryName = "$CONTAINERD_BIN_DIR/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$dir/cni/net.d"
    conf_template = "$dir/cni/bridge.conflist.template"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
}

# start_runtime N: node N's berthd or containerd, in the node's
# namespaces, until its CRI socket answers.
start_runtime() {
	local n=$1 dir run i cmd
	dir=$(node_dir "$n")
	run=$(node_run "$n")
	running "$run/runtime.pid" && return
	case "$(runtime)" in
	containerd)
		# The shim is found in PATH.
		cmd=(env "PATH=$CONTAINERD_BIN_DIR:$PATH" "$CONTAINERD_BIN_DIR/containerd" --config "$dir/containerd.toml")
		;;
	*) cmd=("$BERTH_BIN_DIR/berthd" --config "$dir/berth.toml") ;;
	esac
	start_daemon "$run/runtime.pid" "$dir/$(runtime).log" "node$n/runtime" \
		nsenter --net="/run/netns/$(node_netns "$n")" --mount="$RUN_DIR/node$n.mnt" -- "${cmd[@]}"
	for i in $(seq 300); do
		[ -S "$(node_socket "$n")" ] && cri_answers "$n" && return
		sleep 0.1
	done
	die "the runtime of node $n did not come up: $(tail -20 "$dir/$(runtime).log")"
}

# cri_answers N: node N's runtime answers the CRI Version call (berthctl
# speaks the CRI to either runtime).
cri_answers() {
	in_node "$1" "$BERTH_BIN_DIR/berthctl" --runtime-endpoint "unix://$(node_socket "$1")" version >/dev/null 2>&1
}

# start_kubelet N: the kubelet of node N, restarted whenever it exits, as
# the systemd unit kubeadm expects does; it waits for kubeadm's files.
start_kubelet() {
	local n=$1 dir run
	dir=$(node_dir "$n")
	run=$(node_run "$n")
	running "$run/kubelet-loop.pid" && return
	start_daemon "$run/kubelet-loop.pid" "$dir/kubelet.log" "node$n/kubelet" \
		nsenter --net="/run/netns/$(node_netns "$n")" --mount="$RUN_DIR/node$n.mnt" -- \
		"$here/kubelet-loop.sh" "$K8S_BIN_DIR/kubelet" "$run/kubelet.pid"
}

# preflight_ignores: kubeadm's flag naming the preflight checks that cannot
# pass here, one by one, each with the reason (nothing where all can).
preflight_ignores() {
	# (Without systemd, Service-Kubelet only warns that kubeadm cannot
	# enable the kubelet's unit: kubelet-loop.sh runs it.)
	local ignores=()
	# cgroup v1: the kubelet config says failCgroupV1: false, but the
	# system verification refuses v1 outright.
	[ -f /sys/fs/cgroup/cgroup.controllers ] || ignores+=(SystemVerification)
	# Swap is the host's; the kubelet is configured for it (failSwapOn off).
	[ "$(swapon --noheadings 2>/dev/null | wc -l)" -eq 0 ] || ignores+=(Swap)
	local IFS=,
	[ ${#ignores[@]} -eq 0 ] || echo "--ignore-preflight-errors=${ignores[*]}"
}

kubeadm_init() {
	local dir cfg token
	dir=$(node_dir 1)
	cfg=$dir/kubeadm.yaml
	token=$(printf '%s.%s' "$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
		"$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')")
	cat >"$cfg" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
- token: "$token"
  ttl: 24h0m0s
localAPIEndpoint:
  advertiseAddress: $(node_ip 1)
  bindPort: 6443
nodeRegistration:
  name: $(node_name 1)
  criSocket: unix://$(node_socket 1)
  imagePullPolicy: IfNotPresent
  kubeletExtraArgs:
  - name: node-ip
    value: $(node_ip 1)
  - name: cgroup-root
    value: /$(node_cgroup 1)
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $(k8s_version)
imageRepository: $REGISTRY/k8s
clusterName: berth
networking:
  podSubnet: $POD_SUBNET
  serviceSubnet: $SERVICE_SUBNET
  dnsDomain: cluster.local
etcd:
  local:
    dataDir: $dir/etcd
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
resolvConf: $CLUSTER_DIR/resolv.conf
# Pod and container stats from the runtime (ListPodSandboxStats,
# ListContainerStats), not from cAdvisor: berth's numbers, as on nodes
# that turn the beta on.
featureGates:
  PodAndContainerStatsFromCRI: true
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_SUBNET
EOF
	log "kubeadm init on $(node_name 1) ($(node_ip 1))"
	in_node 1 "$K8S_BIN_DIR/kubeadm" init --config "$cfg" \
		$(preflight_ignores) >"$dir/kubeadm-init.log" 2>&1 ||
		die "kubeadm init failed: $(tail -30 "$dir/kubeadm-init.log")"
	in_node 1 cat /etc/kubernetes/admin.conf >"$CLUSTER_DIR/kubeconfig"
	chmod 600 "$CLUSTER_DIR/kubeconfig"
}

kubeadm_join() {
	local n=$1 dir join cfg
	dir=$(node_dir "$n")
	join=$(in_node 1 "$K8S_BIN_DIR/kubeadm" token create --print-join-command --kubeconfig /etc/kubernetes/admin.conf 2>/dev/null)
	# "kubeadm join 10.210.0.11:6443 --token T --discovery-token-ca-cert-hash H"
	read -r -a words <<<"$join"
	local endpoint=${words[2]} token hash i
	for i in "${!words[@]}"; do
		case "${words[$i]}" in
		--token) token=${words[$((i + 1))]} ;;
		--discovery-token-ca-cert-hash) hash=${words[$((i + 1))]} ;;
		esac
	done
	cfg=$dir/kubeadm-join.yaml
	cat >"$cfg" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: $endpoint
    token: $token
    caCertHashes: [$hash]
nodeRegistration:
  name: $(node_name "$n")
  criSocket: unix://$(node_socket "$n")
  imagePullPolicy: IfNotPresent
  kubeletExtraArgs:
  - name: node-ip
    value: $(node_ip "$n")
  - name: cgroup-root
    value: /$(node_cgroup "$n")
EOF
	log "kubeadm join $(node_name "$n") ($(node_ip "$n"))"
	in_node "$n" "$K8S_BIN_DIR/kubeadm" join --config "$cfg" \
		$(preflight_ignores) >"$dir/kubeadm-join.log" 2>&1 ||
		die "kubeadm join of node $n failed: $(tail -30 "$dir/kubeadm-join.log")"
}

kubectl() { "$K8S_BIN_DIR/kubectl" --kubeconfig "$CLUSTER_DIR/kubeconfig" "$@"; }

# route_pod_cidrs NODES: each node routes every other node's pod CIDR to
# that node, once the controller manager has given them out.
route_pod_cidrs() {
	local nodes=$1 n m cidr i
	for m in $(seq "$nodes"); do
		cidr=
		for i in $(seq 300); do
			cidr=$(kubectl get node "$(node_name "$m")" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
			[ -n "$cidr" ] && break
			sleep 0.2
		done
		[ -n "$cidr" ] || die "node $(node_name "$m") got no pod CIDR"
		for n in $(seq "$nodes"); do
			[ "$n" = "$m" ] && continue
			ip -n "$(node_netns "$n")" route replace "$cidr" via "$(node_ip "$m")"
		done
	done
}

cmd_up() {
	local nodes=${1:-1} n
	[ "$(id -u)" -eq 0 ] || die "run as root"
	for b in kubeadm kubelet kubectl; do [ -x "$K8S_BIN_DIR/$b" ] || die "$K8S_BIN_DIR/$b missing (make cluster builds it)"; done
	mkdir -p "$CLUSTER_DIR"
	if other_owner; then
		die "another cluster is up on this machine (CLUSTER_DIR=$(owner)); take it down first: CLUSTER_DIR=$(owner) $0 down"
	fi
	if [ -f "$CLUSTER_DIR/nodes" ]; then
		die "a cluster is up already ($(cat "$CLUSTER_DIR/nodes") nodes); cluster.sh down first"
	fi
	claim_run_dir
	echo "$nodes" >"$CLUSTER_DIR/nodes"
	echo "${CLUSTER_RUNTIME:-berth}" >"$CLUSTER_DIR/runtime"
	case "$(runtime)" in
	berth) ;;
	containerd)
		for b in containerd containerd-shim-runc-v2 runc; do
			[ -x "$CONTAINERD_BIN_DIR/$b" ] || die "$CONTAINERD_BIN_DIR/$b missing (hack/containerd/build.sh builds it)"
		done
		# The shims' sockets go to /run/containerd whatever the config
		# says: each node has its own.
		NODE_BINDS+=(/run/containerd)
		;;
	*) die "CLUSTER_RUNTIME=$(runtime): berth or containerd" ;;
	esac
	note_missing_paths "${HOST_PATHS[@]}"
	if [ ! -f "$CLUSTER_DIR/sysctls" ]; then
		local s
		for s in "${KUBELET_SYSCTLS[@]}"; do echo "$s $(cat "/proc/sys/$s")"; done >"$CLUSTER_DIR/sysctls"
	fi
	# The nodes' resolver: the host's end of the bridge, where nothing
	# answers, so CoreDNS forwards nothing off the machine.
	echo "nameserver $HOST_IP" >"$CLUSTER_DIR/resolv.conf"
	setup_network "$nodes"
	start_registry
	log "pushing the control plane's images to $REGISTRY"
	push_images
	for n in $(seq "$nodes"); do
		mkdir -p "$(node_dir "$n")"
		setup_mounts "$n"
		setup_cgroups "$n"
		write_node_config "$n"
		start_runtime "$n"
		start_kubelet "$n"
	done
	kubeadm_init
	for n in $(seq 2 "$nodes"); do kubeadm_join "$n"; done
	route_pod_cidrs "$nodes"
	# The first node runs workloads too, as kind's and minikube's do: one
	# node must, and two give the scheduler both to spread over.
	kubectl taint node "$(node_name 1)" node-role.kubernetes.io/control-plane:NoSchedule- >/dev/null
	log "waiting for the nodes and CoreDNS to be ready"
	kubectl wait --for=condition=Ready node --all --timeout=300s >/dev/null
	kubectl -n kube-system rollout status deployment/coredns --timeout=300s >/dev/null
	kubectl -n kube-system rollout status daemonset/kube-proxy --timeout=300s >/dev/null
	kubectl get nodes -o wide >&2
	cmd_env
	cat >&2 <<EOF

Go on with:
  kubectl get pods -A -o wide
  kubectl create deployment web --image=$REGISTRY/k8s/pause:$(pause_tag) --replicas=2
  make cluster-down
EOF
}

cmd_env() {
	[ -f "$CLUSTER_DIR/kubeconfig" ] || die "no cluster is up"
	echo "export KUBECONFIG=$CLUSTER_DIR/kubeconfig"
	echo "export PATH=$K8S_BIN_DIR:\$PATH"
}

cmd_down() {
	local nodes n d p
	if other_owner; then
		log "the machine's cluster is $(owner)'s, not $CLUSTER_DIR's: leaving it up"
		find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -name registry -exec rm -rf {} +
		return 0
	fi
	nodes=$(cat "$CLUSTER_DIR/nodes" 2>/dev/null || echo 0)
	for n in $(seq "$nodes" -1 1); do
		local run dir
		run=$(node_run "$n")
		dir=$(node_dir "$n")
		stop_pid "$run/kubelet-loop.pid"
		stop_pid "$run/kubelet.pid"
		if [ -e "$RUN_DIR/node$n.mnt" ] && running "$run/runtime.pid"; then
			# kubeadm reset removes every pod through the CRI, then the
			# files kubeadm wrote (all of them in the node's directories).
			in_node "$n" "$K8S_BIN_DIR/kubeadm" reset --force \
				--cri-socket "unix://$(node_socket "$n")" >"$dir/kubeadm-reset.log" 2>&1 ||
				log "kubeadm reset on node $n: $(tail -5 "$dir/kubeadm-reset.log")"
			# What kubeadm reset does not know of.
			in_node "$n" "$BERTH_BIN_DIR/berthctl" --runtime-endpoint "unix://$(node_socket "$n")" rmp --all >/dev/null 2>&1 || true
		fi
		stop_pid "$run/runtime.pid"
		if [ -e "$RUN_DIR/node$n.mnt" ]; then
			umount "$RUN_DIR/node$n.mnt" 2>/dev/null || true
			rm -f "$RUN_DIR/node$n.mnt"
		fi
		[ -e "/run/netns/$(node_netns "$n")" ] && ip netns del "$(node_netns "$n")"
		kill_cgroup "$(node_cgroup "$n")"
	done
	stop_pid "$CLUSTER_DIR/registry/pid"
	kill_cgroup "$CGROUP_PARENT"
	[ -e "/run/netns/$NETNS_BRIDGE" ] && ip netns del "$NETNS_BRIDGE"
	ip link del "$HOST_VETH" 2>/dev/null || true
	if [ -f "$CLUSTER_DIR/sysctls" ]; then
		while read -r s v; do echo "$v" >"/proc/sys/$s"; done <"$CLUSTER_DIR/sysctls"
	fi
	if [ -f "$CLUSTER_DIR/created-paths" ]; then
		# Mount points (empty) and what the cluster's pods made.
		while read -r p; do rm -rf "$p"; done <"$CLUSTER_DIR/created-paths"
	fi
	if mountpoint -q "$RUN_DIR"; then umount "$RUN_DIR"; fi
	rm -rf "$RUN_DIR"
	# The registry's data is a cache of images built from the binaries;
	# everything else goes.
	find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -name registry -exec rm -rf {} +
	rm -rf "$CLUSTER_DIR/registry/pid" "$CLUSTER_DIR/registry/registry.log"
}

case "${1:-}" in
up) cmd_up "${2:-1}" ;;
down) cmd_down ;;
env) cmd_env ;;
start)
	[ -n "${2:-}" ] && [ -e "$RUN_DIR/node$2.mnt" ] || die "usage: $0 start N (a node of the cluster)"
	start_runtime "$2"
	start_kubelet "$2"
	;;
*)
	echo "usage: $0 up [NODES] | down | env | start N" >&2
	exit 2
	;;
esac
