// Package network gives pods their network: a network namespace per pod,
// kept alive by a bind mount, with the loopback interface up, and (in
// cni.go) interfaces and addresses from CNI plugins through libcni.
package network
