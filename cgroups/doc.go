// Package cgroups is berth's view of the host's control groups: which
// version the host runs (v1, hybrid or v2), which driver manages them
// (cgroupfs or systemd), what the host can limit (swap, hugetlb), how an
// OCI resources update is merged into a running container's limits, the
// figures berth reports of a cgroup (Stats, OOM-kill counts), and how
// whole subtrees (pod parents, test parents) are created and removed in
// every hierarchy. No other package opens a cgroup file.
//
// The reading and writing of cgroup files is done by
// github.com/opencontainers/cgroups, the library runc itself uses; this
// package adds the policy berth needs on top of it and nothing else.
package cgroups
