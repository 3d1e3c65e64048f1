package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/urfave/cli"
	"golang.org/x/sys/unix"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var portForwardCommand = cli.Command{
	Name:      "port-forward",
	Usage:     "forward local ports to a pod's ports until interrupted",
	ArgsUsage: "POD-ID [LOCAL-PORT:]POD-PORT...",
	Flags: []cli.Flag{
		cli.StringSliceFlag{Name: "address", Usage: "local addresses to listen on (default 127.0.0.1)"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() < 2 {
			return errors.New("port-forward takes a pod id and at least one [LOCAL-PORT:]POD-PORT")
		}
		specs := []string(ctx.Args()[1:])
		remote, err := remotePorts(specs)
		if err != nil {
			return err
		}
		addresses := ctx.StringSlice("address")
		if len(addresses) == 0 {
			addresses = []string{"127.0.0.1"}
		}
		cctx, cancel := c.ctx()
		resp, err := c.rt.PortForward(cctx, &runtimeapi.PortForwardRequest{PodSandboxId: ctx.Args().First(), Port: remote})
		cancel()
		if err != nil {
			return err
		}
		return forward(resp.Url, addresses, specs)
	}),
}

// remotePorts are the pod's ports of [LOCAL:]REMOTE specs, as kubectl and
// crictl write them.
func remotePorts(specs []string) ([]int32, error) {
	var ports []int32
	for _, s := range specs {
		r := s
		if i := strings.LastIndex(s, ":"); i >= 0 {
			r = s[i+1:]
			if _, err := strconv.ParseUint(s[:i], 10, 16); err != nil {
				return nil, fmt.Errorf("port %q: local port %q is not a port number", s, s[:i])
			}
		}
		p, err := strconv.ParseUint(r, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("port %q: pod port %q is not a port number (1-65535)", s, r)
		}
		ports = append(ports, int32(p))
	}
	return ports, nil
}

// forward listens on the local ports and forwards each connection over
// the streaming server's SPDY connection, until SIGINT or SIGTERM.
func forward(rawURL string, addresses, specs []string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	transport, upgrader, err := spdy.RoundTripperFor(&restclient.Config{TLSClientConfig: restclient.TLSClientConfig{Insecure: true}})
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		close(stop)
	}()
	fw, err := portforward.NewOnAddresses(dialer, addresses, specs, stop, ready, os.Stdout, os.Stderr)
	if err != nil {
		return err
	}
	return fw.ForwardPorts()
}
