#!/usr/bin/env bash
# kubelet-loop.sh KUBELET PIDFILE: run the kubelet as kubeadm's systemd
# unit would (its drop-in's flags, restarted whenever it exits), for a
# node without systemd. It waits for the files kubeadm writes.
set -u
kubelet=$1 pidfile=$2
term() {
	[ -f "$pidfile" ] && read -r pid _ <"$pidfile" && kill "$pid" 2>/dev/null
	exit 0
}
trap term TERM INT
while true; do
	if [ -f /var/lib/kubelet/config.yaml ] && [ -f /var/lib/kubelet/kubeadm-flags.env ]; then
		KUBELET_KUBEADM_ARGS=
		# shellcheck disable=SC1091
		. /var/lib/kubelet/kubeadm-flags.env
		# shellcheck disable=SC2086
		"$kubelet" --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
			--kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml \
			$KUBELET_KUBEADM_ARGS &
		# pid and start time, as cluster.sh keeps its daemons'
		echo "$! $(sed 's/.*) //' "/proc/$!/stat" | cut -d' ' -f20)" >"$pidfile"
		wait $!
		echo "kubelet-loop: kubelet exited ($?), restarting" >&2
		rm -f "$pidfile"
	fi
	sleep 1
done
